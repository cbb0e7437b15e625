"""A threaded request stream for the service: bursty predictions now, ground truth later."""
