"""condor-relay: reach running HTCondor jobs by host name through one SSH relay daemon."""

__version__ = "0.1.0"
