package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// seedJS is the JavaScript of the Beep backend-webrtc README (seed 000), as
// written there, with:
//   - wsuri pointing at the router under test (with the dev identity);
//   - its typo fixed: p.setLocalDescription → pc.setLocalDescription;
//   - the `)` that setRemoteDescription( lacked;
//   - "Do stuff with event.streams" done: each stream is played, since
//     Chromium measures totalAudioEnergy only for audio that is played.
//
// The harness script (harnessJS) drops its STUN server and keeps its SDP on
// loopback; the code below is not changed for that.
const seedJS = `const wsuri = WSURI;
let localSDP = '';
let remoteSDP = '';
const socket = new WebSocket(wsuri);
socket.onmessage = (e) => {
  remoteSDP = e.data;
  try {
    pc.setRemoteDescription(new RTCSessionDescription({ type: 'answer', sdp: remoteSDP }));
  } catch(e) {
    console.error(e);
  }
};
const pc = new RTCPeerConnection({
  iceServers: [
    {
      urls: 'stun:stun.l.google.com:19302',
    },
  ],
});
pc.onicecandidate = (e) => {
  if (e.candidate === null) {
    localSDP = pc.localDescription.sdp;
    socket.send(localSDP);
  }
};
navigator.mediaDevices
  .getUserMedia({ audio: true })
  .then((stream) => {
    for (const track of stream.getAudioTracks()) {
      pc.addTrack(track);
    }
    pc.createOffer()
      .then((d) => {
        pc.setLocalDescription(d);
      })
      .catch((e) => console.error(e));
  })
  .catch((e) => console.error(e));
pc.ontrack = (event) => {
  // Do stuff with event.streams
  const audio = document.createElement('audio');
  audio.autoplay = true;
  audio.srcObject = event.streams[0] || new MediaStream([event.track]);
  document.body.append(audio);
};
`

// slotsJS offers one sendrecv audio transceiver with the microphone and
// SLOTS-1 recvonly ones, so that it can hear SLOTS speakers at once; each
// receiving transceiver plays into its own <audio>. Signalling as the seed:
// bare SDP after gathering completed.
const slotsJS = `const wsuri = WSURI;
const pc = new RTCPeerConnection();
(async () => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const tx = [pc.addTransceiver(stream.getAudioTracks()[0], { direction: 'sendrecv', streams: [stream] })];
  for (let i = 1; i < SLOTS; i++) tx.push(pc.addTransceiver('audio', { direction: 'recvonly' }));
  pc.ontrack = (e) => {
    const audio = document.createElement('audio');
    audio.autoplay = true;
    audio.dataset.slot = String(tx.indexOf(e.transceiver));
    audio.srcObject = new MediaStream([e.track]);
    document.body.append(audio);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
  });
  const socket = new WebSocket(wsuri);
  socket.onopen = () => socket.send(pc.localDescription.sdp);
  socket.onmessage = (e) => pc.setRemoteDescription({ type: 'answer', sdp: e.data }).catch((err) => console.error(err));
})().catch((err) => console.error(err));
`

// pageServer serves the test pages on 127.0.0.1 (a secure context for
// getUserMedia):
//
//	/seed?wsuri=…          the seed README's JavaScript
//	/slots?wsuri=…&n=3     the multi-slot client
func pageServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	serve := func(w http.ResponseWriter, r *http.Request, title, js string) {
		wsuri, err := url.Parse(r.URL.Query().Get("wsuri"))
		if err != nil || (wsuri.Scheme != "ws" && wsuri.Scheme != "wss") {
			http.Error(w, "want ?wsuri=ws://…", http.StatusBadRequest)
			return
		}
		lit, _ := json.Marshal(wsuri.String())
		js = strings.Replace(js, "WSURI", string(lit), 1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><html><head><meta charset=utf-8><title>" + title +
			"</title></head><body><script>\n" + js + "</script></body></html>"))
	}
	mux.HandleFunc("/seed", func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, "seed", seedJS)
	})
	mux.HandleFunc("/slots", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 1 || n > 16 {
			http.Error(w, "want ?n=1..16", http.StatusBadRequest)
			return
		}
		serve(w, r, "slots", strings.Replace(slotsJS, "SLOTS", strconv.Itoa(n), -1))
	})
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent) // keeps the pages' consoles free of 404s
	})
	srv := httptest.NewServer(mux) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return srv
}

// pageURL returns the URL of a test page connecting as user/client.
func pageURL(srv *httptest.Server, rt *router, path, user, client string, extra url.Values) string {
	q := url.Values{}
	q.Set("userid", user)
	q.Set("clientid", client)
	ws := rt.WS + "/connect?" + q.Encode()
	v := url.Values{"wsuri": {ws}}
	for k, vs := range extra {
		v[k] = vs
	}
	return srv.URL + path + "?" + v.Encode()
}
