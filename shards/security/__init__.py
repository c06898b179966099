"""The security boundary: TLS on every listener, the cluster's certificate authority, bearer
tokens, and the guard that authenticates and authorises every RPC (core.authority decides).

- `pki`: the CA, and certificates for servers, cluster processes and clients;
- `tokens`: bearer tokens (JWT, EdDSA);
- `credentials`: what a server and a caller are given, their channels, revocations;
- `guard`: the interceptor every server installs per listener, and `caller()`;
- `directory`: a credentials directory (`tally credentials`, and the one `tally up` keeps).
"""
