// An Arbiter client in plain JavaScript that does what Arbiter's React client
// does (src/services/{Client,Producer,Consumer}.ts and Arbiter.tsx, as
// distilled in ../shared/contracts/arbiter.md), from the customer's page on
// another origin than the router:
//   - room: GET {api}/getRoomId?urlPath=<location.pathname, unencoded>; on
//     404, PATCH {api}/claimRoom {"urlPath"} (JSON: a CORS preflight), then
//     getRoomId again; the room id is data.id;
//   - gateway: on open, identify {id, roomId, type: "client"}; the producer
//     (negotiated data channel chat id 100, audio muted until toggleMic,
//     video, negotiated data channel features id 110, plain addTrack) offers
//     on negotiationneeded right after setLocalDescription (no candidates)
//     and trickles {type: "producer", sender, candidate, roomId} handshakes;
//   - consumers: one RTCPeerConnection per remotePeerId, answering the
//     router's offers; an offer arriving while the previous one is being
//     applied is dropped (as Consumer.ts does); candidates queued until the
//     offer is set;
//   - features: {id, features} on the features channel sets a consumer's
//     features (creating it if absent); its video is shown only then;
//   - clientDisconnect: the consumer is forgotten, not closed (the router
//     must close it).
//
// window.CONFIG = {api, signal, rtc}. State for the test: window.arb (see
// info()).
'use strict';
(() => {
  const cfg = window.CONFIG;
  const A = {
    id: crypto.randomUUID(), roomId: null, urlPath: window.location.pathname,
    http: [], // "METHOD path status"
    errors: [], serverErrors: [], wrapped: 0,
    producer: null, chat: null, features: null, audioTrack: null, offerCandidates: -1,
    consumers: new Map(), forgotten: [], disconnects: [], chats: [], featureMsgs: [], dropped: 0,
    wsState: 'new', closed: '',
  };
  window.arb = A;
  const fail = (what, err) => {
    const msg = what + (err === undefined ? '' : ': ' + ((err && err.message) || String(err)));
    console.error(msg);
    A.errors.push(msg);
  };
  const candidatesIn = (sdp) => (sdp.match(/^a=candidate:/gm) || []).length;

  // The room API (axios in the client; fetch here, same requests).
  const getRoomId = async () => {
    const r = await fetch(cfg.api + '/getRoomId?urlPath=' + A.urlPath);
    A.http.push('GET /getRoomId ' + r.status);
    return r;
  };
  A.findRoom = async () => {
    let r = await getRoomId();
    if (r.status === 404) {
      // The user clicks "Create Room".
      const c = await fetch(cfg.api + '/claimRoom', {
        method: 'PATCH', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ urlPath: A.urlPath }),
      });
      A.http.push('PATCH /claimRoom ' + c.status);
      if (c.status !== 200) throw new Error('claimRoom: ' + c.status + ' ' + (await c.text()));
      r = await getRoomId();
    }
    if (r.status !== 200) throw new Error('getRoomId: ' + r.status + ' ' + (await r.text()));
    const data = await r.json();
    if (!data.id) throw new Error('getRoomId answered no id: ' + JSON.stringify(data));
    if (data.roomId !== data.id) fail('getRoomId: roomId ' + JSON.stringify(data.roomId) + ' differs from id ' + JSON.stringify(data.id));
    A.roomId = data.id;
    return data.id;
  };

  A.media = navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 15 } });

  // The gateway.
  let ws = null;
  const send = (action, data) => ws.send(JSON.stringify({ action, data }));
  const handshake = (data) => send('handshake', Object.assign(data, { roomId: A.roomId }));
  A.connect = async () => {
    const stream = await A.media; // the client has its media before Connect
    ws = new WebSocket(cfg.signal);
    A.wsState = 'connecting';
    ws.onopen = () => {
      A.wsState = 'open';
      send('identify', { id: A.id, roomId: A.roomId, type: 'client' });
      produce(stream).catch((err) => fail('producer', err));
    };
    ws.onclose = (e) => {
      A.wsState = 'closed';
      A.closed = 'code ' + e.code + ' ' + e.reason;
    };
    ws.onmessage = (e) => {
      const data = JSON.parse(e.data);
      if (data && data.action !== undefined) A.wrapped++;
      switch (data && data.type) {
        case 'producer':
          producerMessage(data).catch((err) => fail('producer message', err));
          return;
        case 'consumer':
          consumerMessage(data).catch((err) => fail('consumer message from ' + data.remotePeerId, err));
          return;
        case 'clientDisconnect': {
          A.disconnects.push(data.clientId);
          const c = A.consumers.get(data.clientId);
          if (c) {
            A.consumers.delete(data.clientId); // forgotten, not closed
            A.forgotten.push(c);
            c.tile.remove();
          }
          return;
        }
        default:
          A.serverErrors.push(data);
          console.log('invalid handshake type', JSON.stringify(data));
      }
    };
  };

  // The producer.
  let producerQueue = [];
  const produce = async (stream) => {
    const pc = new RTCPeerConnection(cfg.rtc);
    A.producer = pc;
    A.chat = pc.createDataChannel('chat', { negotiated: true, id: 100 });
    A.chat.onmessage = (e) => A.chats.push(JSON.parse(e.data));
    for (const track of stream.getTracks()) {
      if (track.kind === 'audio') {
        track.enabled = false; // the stock UI starts muted
        A.audioTrack = track;
      }
      pc.addTrack(track);
    }
    A.features = pc.createDataChannel('features', { negotiated: true, id: 110 });
    A.features.onmessage = (e) => {
      const m = JSON.parse(e.data);
      A.featureMsgs.push(m);
      const c = A.consumers.get(m.id) || consumer(m.id);
      c.features = m.features;
      render(c);
    };
    pc.onicecandidate = (e) => {
      if (e.candidate) handshake({ type: 'producer', sender: A.id, candidate: e.candidate.toJSON() });
    };
    pc.onnegotiationneeded = async () => {
      try {
        await pc.setLocalDescription();
        const d = pc.localDescription;
        A.offerCandidates = candidatesIn(d.sdp);
        A.offerSdp = d.sdp;
        handshake({ type: 'producer', sender: A.id, description: { type: d.type, sdp: d.sdp } });
      } catch (err) {
        fail('producer offer', err);
      }
    };
  };
  const producerMessage = async (data) => {
    const pc = A.producer;
    if (data.description) {
      await pc.setRemoteDescription(data.description);
      for (const c of producerQueue) await pc.addIceCandidate(c);
      producerQueue = [];
    } else if (data.candidate) {
      if (!pc.remoteDescription) producerQueue.push(data.candidate);
      else await pc.addIceCandidate(data.candidate);
    }
  };
  A.toggleMic = () => {
    A.audioTrack.enabled = !A.audioTrack.enabled;
    return A.audioTrack.enabled;
  };
  A.sendChat = (content) => A.chat.send(JSON.stringify({ id: A.id, sender: 'self', content }));

  // Consumers.
  const consumer = (peer) => {
    const pc = new RTCPeerConnection(cfg.rtc);
    const tile = document.createElement('div');
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    video.style.display = 'none'; // a poster until the features say video
    const audio = document.createElement('audio');
    audio.autoplay = true;
    tile.append(video, audio);
    document.body.append(tile);
    const c = { peer, receiver: '', pc, tile, video, audio, stream: new MediaStream(), features: null, shown: false, busy: false, queue: [], offers: 0, tracks: [] };
    A.consumers.set(peer, c);
    pc.ontrack = (e) => {
      c.tracks.push(e.track.kind);
      c.stream.addTrack(e.track);
      if (e.track.kind === 'audio') audio.srcObject = new MediaStream([e.track]);
      render(c);
    };
    pc.onicecandidate = (e) => {
      if (e.candidate) handshake({ type: 'consumer', sender: c.receiver, remotePeerId: peer, candidate: e.candidate.toJSON() });
    };
    return c;
  };
  const render = (c) => {
    if (!c.features || !c.features.video || c.shown) return;
    c.shown = true;
    c.video.srcObject = c.stream;
    c.video.style.display = '';
  };
  const consumerMessage = async (data) => {
    if (data.receiver !== A.id) fail('consumer message for receiver ' + JSON.stringify(data.receiver) + ', not this client');
    const c = A.consumers.get(data.remotePeerId) || consumer(data.remotePeerId);
    c.receiver = data.receiver;
    if (data.description) {
      if (c.busy) {
        A.dropped++; // Consumer.ts drops an offer that overlaps the previous one
        return;
      }
      // As Consumer.ts: busy only while the offer is applied; the answer
      // is implicit; queued candidates are added after it is sent.
      c.busy = true;
      c.offers++;
      try {
        await c.pc.setRemoteDescription(data.description);
      } finally {
        c.busy = false;
      }
      if (data.description.type !== 'offer') return;
      await c.pc.setLocalDescription();
      handshake({ type: 'consumer', sender: c.receiver, remotePeerId: c.peer, description: c.pc.localDescription });
      while (c.queue.length > 0) await c.pc.addIceCandidate(c.queue.shift());
    } else if (data.candidate) {
      if (!c.pc.remoteDescription) c.queue.push(data.candidate);
      else await c.pc.addIceCandidate(data.candidate);
    }
  };

  // Statistics for the test.
  const stats = async (pc) => {
    const o = { state: pc.connectionState, ice: pc.iceConnectionState, audioPackets: 0, totalAudioEnergy: 0, framesDecoded: 0, videoPackets: 0, frameWidth: 0, audioSent: 0, videoSent: 0, local: '', remote: '' };
    if (pc.signalingState === 'closed') return o;
    const st = await pc.getStats();
    st.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        o.audioPackets += r.packetsReceived || 0;
        o.totalAudioEnergy += r.totalAudioEnergy || 0;
      } else if (r.type === 'inbound-rtp' && r.kind === 'video') {
        o.framesDecoded += r.framesDecoded || 0;
        o.videoPackets += r.packetsReceived || 0;
        o.frameWidth = r.frameWidth || o.frameWidth;
      } else if (r.type === 'outbound-rtp') {
        if (r.kind === 'audio') o.audioSent += r.packetsSent || 0;
        else o.videoSent += r.packetsSent || 0;
      } else if (r.type === 'transport' && r.selectedCandidatePairId) {
        o.dtls = r.dtlsState;
        const p = st.get(r.selectedCandidatePairId);
        if (p) {
          o.local = (st.get(p.localCandidateId) || {}).address || '';
          o.remote = (st.get(p.remoteCandidateId) || {}).address || '';
        }
      }
    });
    return o;
  };
  const dtlsOf = (pc) => {
    const r = pc.getReceivers()[0];
    return (r && r.transport && r.transport.state) || '';
  };
  A.info = async () => {
    const out = {
      id: A.id, roomId: A.roomId, http: A.http.slice(), errors: A.errors.slice(), serverErrors: A.serverErrors.slice(),
      wrapped: A.wrapped, offerCandidates: A.offerCandidates, ws: A.wsState, closed: A.closed, dropped: A.dropped,
      disconnects: A.disconnects.slice(), chats: A.chats.slice(), featureMsgs: A.featureMsgs.length,
      chatState: A.chat ? A.chat.readyState : '', featuresState: A.features ? A.features.readyState : '',
      producer: A.producer ? await stats(A.producer) : null, consumers: [], forgotten: [],
    };
    for (const c of A.consumers.values()) {
      out.consumers.push(Object.assign({ peer: c.peer, receiver: c.receiver, offers: c.offers, tracks: c.tracks.slice(), features: c.features, shown: c.shown, videoWidth: c.video.videoWidth }, await stats(c.pc)));
    }
    for (const c of A.forgotten) {
      out.forgotten.push({ peer: c.peer, state: c.pc.connectionState, ice: c.pc.iceConnectionState, dtls: dtlsOf(c.pc) });
    }
    return out;
  };
})();
