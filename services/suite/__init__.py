"""The server-side tools: the `longtail` command line, data loaders, the indexing job, the local
suite runner (`longtail up`) and the offline evaluation. Backends that only call the suite install
the `longtail-client` wheel (clients/python) instead."""
