"""The router in front of an instance's replicas: model-aware placement of jobs, forwarding by id, and jobs
held while no replica is ready (scale to zero). See docs/router.md."""
