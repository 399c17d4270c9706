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
// Which up-track a down-track carries is not decided here: a policy above
// (package room) binds them with DownTrack.SetSource and tells up-tracks
// where their packets go.
package rtc
