"""Other tools run beside ours on identical data, each in its own environment.

Nothing here is imported by ``graphsam_ext`` itself, and no peer is a dependency of the package:
``graphsam_ext.peers.chemprop_bench`` drives chemprop through its command line in chemprop's own
virtual environment (``make bench-chemprop``).
"""
