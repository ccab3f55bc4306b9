"""bci_qif: brain-computer interface decoding with exact-gradient spiking networks.

Quadratic (QIF) and leaky (LIF) integrate-and-fire networks are simulated event by
event in closed form, so that autodiff gives the exact gradient of the spiking
network's loss.
"""

__version__ = "0.1.0"

__all__ = ["QIFClassifier", "__version__"]


def __getattr__(name):
    # Lazy: `import bci_qif` must stay light (no JAX, MNE or scikit-learn import)
    # for tools that only need the version or a submodule.
    if name == "QIFClassifier":
        from .estimator import QIFClassifier

        return QIFClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"QIFClassifier"})
