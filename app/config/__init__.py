"""Settings: one JSON file, typed with msgspec, environment overrides on top.

``settings`` holds the typed sections, ``values`` the parsers of addresses, hosts and
origins (and the error every check raises), ``environment`` the ``JOBNODE_*`` variables,
``loading`` reading and validating a file, ``masking`` the copy with secrets hidden.
"""
