// Package rtc is the router's media core, shared by every signalling
// front-end: WebRTC peer connections (ICE, DTLS, SRTP through pion), the
// up-tracks peers publish and the down-tracks they receive on.
//
//   - An Engine owns the pion API, the UDP sockets and every Peer.
//   - A Peer is one WebRTC connection. Its owner (a room) learns of its
//     life through a Handler: connected, closed, tracks published.
//   - An UpTrack is what a publisher sends: the reader that feeds each
//     packet to the owner's TrackSink (the pipeline), and keyframe
//     requests.
//   - A DownTrack is what one subscriber receives: it rewrites whatever
//     up-track it carries into one continuous RTP stream of its own (SSRC,
//     sequence numbers, timestamps, header extensions), encrypts and sends
//     it, reports on it and answers NACKs for it.
//
// Media takes direct paths through pion's connection: the socket's reader
// authenticates and decrypts a connected peer's RTP and hands it to its
// track's reader once (ingress.go), and down-tracks encrypt and send their
// packets themselves (egress.go). pion keeps ICE, DTLS, RTCP and the
// interceptors (NACK generation, receiver reports, TWCC).
//
// Which up-track a down-track carries is not decided here: a policy above
// (package room) binds them with DownTrack.SetSource and tells up-tracks
// where their packets go.
package rtc
