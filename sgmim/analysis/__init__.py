"""Analyses of trained encoders (paper Figure 3: Fourier spectra of feature maps)."""
