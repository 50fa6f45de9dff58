"""Studies: a grid of pretrain → fine-tune → evaluate chains run through the service
(`sgmim study run`), and the table of results over seeds."""
