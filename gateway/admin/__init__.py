"""The Admin API: resources read and written over HTTP on their own port, behind an admin key."""
