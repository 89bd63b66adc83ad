"""The household's peers: who they are and how they talk.

- `identity`: this peer's Ed25519 key pair (peer.key, 0600), its peer id, its deterministic
  certificate, and the token another machine pastes (`realize id`).
- `roster`: the peers accepted, by key (peers.json, written only by `realize peer`), and when
  each was last connected (peers-seen.json, written only by the server).
- `tls`: TLS 1.3 contexts whose only trust anchors are the roster's certificates; the
  handshake that returns an authenticated `PeerStream` (stream + roster entry); `dial`.
- `links`: one live link per peer, and the rule that keeps one when both dial (`keep_new`).
- `program`: the peer program's handlers (xdr/peer.py); NULL so far.
- `service`: the server's `PeerService`: listener, diallers with backoff, heartbeat, roster
  reload (a removed peer's link closed at once) and per-peer status.
"""
