"""Studies: a grid of pretrain → fine-tune → evaluate chains that the service runs (`sgmim study
run` posts one and follows it), and the table of results over seeds."""
