"""Stand-ins shipped with the package for tests and benchmarks: a tiny random-weight CLIP, image
folders, and a scripted OpenAI-compatible server. They let ``promptclimb bench`` and the bench
scripts run outside a checkout; production code never imports them."""
