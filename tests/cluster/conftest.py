"""The one-node SLURM cluster fixture (tests/cluster/slurm_cluster.py), for the tests of this folder."""

from tests.cluster.slurm_cluster import slurm_cluster  # noqa: F401
