"""Local mode (`kapa up`): the whole autoscaling loop on one machine, with replicas as local processes."""
