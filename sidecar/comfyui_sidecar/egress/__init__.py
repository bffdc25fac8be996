"""One owner for every outbound request the sidecar makes on a caller's or a manifest's behalf.

- `urls`: the one URL parser (pure);
- `addresses`, `policy`: which addresses and URLs may be reached (pure);
- `connector`: the resolver and socket factory that apply the policy to every connection;
- `client`: `EgressClient`, requests with checked redirects, origin-bound credentials and byte caps;
- `outbound`: `Egress`, the three clients of one sidecar (download, upload, webhook);
- `settings`: the environment variables.
This package imports nothing of the rest of the sidecar.
"""
