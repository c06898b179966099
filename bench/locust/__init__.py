"""The Locust suite: scenarios driven by Locust headless against a local or remote cluster,
the bulk loader, the metrics scraper, the cost model and the report (`make bench`)."""
