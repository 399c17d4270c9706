package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
)

// feedsJS is the page of TestFeedsInChromium: it publishes the fake camera
// and microphone on a sendonly connection it offers, and receives each
// other participant on a feed, a connection the router offers. Signalling is
// JSON on a WebSocket (see feedMsg); the page trickles its candidates, the
// router sends all of its own in its SDP.
//
// State for the test: window.pub (the publishing connection), window.feeds
// (id → feed), window.ended (the feed-ended messages received),
// window.errors; window.feedInfo() and window.pubInfo() read getStats.
const feedsJS = `const wsuri = WSURI;
window.pub = null;
window.feeds = new Map();
window.ended = [];
window.errors = [];
const fail = (where, err) => {
  console.error(where, err);
  window.errors.push(where + ': ' + ((err && err.message) || String(err)));
};
const socket = new WebSocket(wsuri);
const send = (m) => socket.send(JSON.stringify(m));
socket.onclose = () => console.log('signalling closed');
const trickle = (pc, id) => {
  pc.onicecandidate = (e) => {
    if (e.candidate && e.candidate.candidate) send({ type: 'candidate', id, candidate: e.candidate.toJSON() });
  };
};
socket.onopen = () => (async () => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
  const pc = new RTCPeerConnection();
  window.pub = pc;
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  trickle(pc, 0);
  await pc.setLocalDescription(await pc.createOffer());
  send({ type: 'publish', sdp: pc.localDescription.sdp });
})().catch((err) => fail('publish', err));
socket.onmessage = (e) => {
  const m = JSON.parse(e.data);
  switch (m.type) {
    case 'answer':
      window.pub.setRemoteDescription({ type: 'answer', sdp: m.sdp }).catch((err) => fail('answer', err));
      break;
    case 'feed':
      receive(m).catch((err) => fail('feed ' + m.id, err));
      break;
    case 'feed-ended': {
      window.ended.push({ id: m.id, reason: m.reason || '' });
      const f = window.feeds.get(m.id);
      if (f) {
        f.ended = m.reason || 'ended';
        f.pc.close();
      }
      break;
    }
    case 'error':
      fail('server', m.reason);
      break;
  }
};
async function receive(m) {
  const pc = new RTCPeerConnection();
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = false;
  video.dataset.feed = String(m.id);
  const audio = document.createElement('audio');
  audio.autoplay = true;
  audio.dataset.feed = String(m.id);
  document.body.append(video, audio);
  const f = { id: m.id, from: m.from, pc, video, audio, ended: '', tracks: [] };
  window.feeds.set(m.id, f);
  pc.ontrack = (e) => {
    f.tracks.push(e.track.kind);
    (e.track.kind === 'video' ? video : audio).srcObject = new MediaStream([e.track]);
  };
  trickle(pc, m.id);
  await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  send({ type: 'feed-answer', id: m.id, sdp: pc.localDescription.sdp });
}
const pair = (st, out) => {
  st.forEach((r) => {
    if (r.type === 'transport' && r.selectedCandidatePairId) {
      const p = st.get(r.selectedCandidatePairId);
      if (p) {
        out.local = (st.get(p.localCandidateId) || {}).address || '';
        out.remote = (st.get(p.remoteCandidateId) || {}).address || '';
      }
    }
  });
};
window.feedInfo = async () => {
  const out = [];
  for (const f of window.feeds.values()) {
    const o = {
      id: f.id, from: f.from, state: f.pc.connectionState, ended: f.ended, tracks: f.tracks.slice(),
      videoWidth: f.video.videoWidth, videoHeight: f.video.videoHeight, videoPaused: f.video.paused, audioPaused: f.audio.paused,
      framesDecoded: 0, keyFramesDecoded: 0, videoPackets: 0, frameWidth: 0, codec: '',
      audioPackets: 0, totalAudioEnergy: 0, local: '', remote: '',
    };
    if (f.pc.signalingState !== 'closed') {
      try {
        const st = await f.pc.getStats();
        st.forEach((r) => {
          if (r.type !== 'inbound-rtp') return;
          if (r.kind === 'video') {
            o.framesDecoded = r.framesDecoded || 0;
            o.keyFramesDecoded = r.keyFramesDecoded || 0;
            o.videoPackets = r.packetsReceived || 0;
            o.frameWidth = r.frameWidth || 0;
            o.codec = (st.get(r.codecId) || {}).mimeType || '';
            o.framesReceived = r.framesReceived || 0;
            o.framesDropped = r.framesDropped || 0;
            o.freezeCount = r.freezeCount || 0;
            o.freezeSeconds = r.totalFreezesDuration || 0;
            o.pliCount = r.pliCount || 0;
            o.nackCount = r.nackCount || 0;
            o.videoPacketsLost = r.packetsLost || 0;
          } else if (r.kind === 'audio') {
            o.audioPackets = r.packetsReceived || 0;
            o.totalAudioEnergy = r.totalAudioEnergy || 0;
          }
        });
        pair(st, o);
      } catch (err) {
        o.statsError = String(err);
      }
    }
    out.push(o);
  }
  return out;
};
window.pubInfo = async () => {
  const pc = window.pub;
  const o = { state: pc ? pc.connectionState : 'none', framesEncoded: 0, videoPackets: 0, audioPackets: 0, local: '', remote: '' };
  if (!pc || pc.signalingState === 'closed') return o;
  const st = await pc.getStats();
  st.forEach((r) => {
    if (r.type !== 'outbound-rtp') return;
    if (r.kind === 'video') {
      o.framesEncoded = r.framesEncoded || 0;
      o.videoPackets = r.packetsSent || 0;
      o.keyFramesEncoded = r.keyFramesEncoded || 0;
      o.framesPerSecond = r.framesPerSecond || 0;
      o.frameWidth = r.frameWidth || 0;
      o.pliReceived = r.pliCount || 0;
      o.nackReceived = r.nackCount || 0;
      o.qualityLimitation = r.qualityLimitationReason || '';
      o.targetBitrate = r.targetBitrate || 0;
    } else if (r.kind === 'audio') {
      o.audioPackets = r.packetsSent || 0;
    }
  });
  pair(st, o);
  return o;
};
`

// serveFeedsPage serves feedsJS with wsuri, on 127.0.0.1 (a secure context
// for getUserMedia).
func serveFeedsPage(w http.ResponseWriter, wsuri string) {
	lit, _ := json.Marshal(wsuri)
	js := strings.Replace(feedsJS, "WSURI", string(lit), 1)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte("<!doctype html><html><head><meta charset=utf-8><title>feeds</title></head><body><script>\n" +
		js + "</script></body></html>"))
}
