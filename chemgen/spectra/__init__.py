"""Vibrational spectra: GFN2-xTB IR and Raman stick spectra, broadening, units and spectrum files."""
