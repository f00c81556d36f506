"""jaxlm: train small transformer language models with JAX and Flax, and keep a record of every run."""

from jaxlm.hostenv import reexec_with_host_tuning

# `python -m jaxlm.<command>` imports this package first: re-executing here, before JAX is
# imported, costs only a bare interpreter start (see jaxlm/hostenv.py for why).
reexec_with_host_tuning()
