"""Where the config lives: a local file (embedded default) or etcd (a cluster)."""
