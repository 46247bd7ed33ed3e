"""The adapters that face clients and applications: the Autobahn protocol, the site, the
server API, metrics."""
