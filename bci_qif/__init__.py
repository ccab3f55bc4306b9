"""bci_qif: brain-computer interface decoding with exact-gradient spiking networks.

Quadratic (QIF) and leaky (LIF) integrate-and-fire networks are simulated event by
event in closed form, so that autodiff gives the exact gradient of the spiking
network's loss.
"""

__version__ = "0.1.0"
