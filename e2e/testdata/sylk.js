// A Sylk client in plain JavaScript that speaks sylkRTC-2 the way sylkrtc.js
// does (../shared/contracts/sylk.md): subprotocol sylkRTC-2, requests with
// uuid transactions matched by ack/error, a ping every 5 s from socket open,
// nothing sent before ready-event, SDP sent without candidates and the
// client's candidates trickled one per request (session-trickle, or
// videoroom-session-trickle keyed by the conference id or the FEED id), then
// candidates: [] to end them. It checks what sylkrtc.js depends on: a
// candidate in every SDP the server sends, a=ssrc in every m-section of a
// feed offer, originator.uri in incoming-session, no headers: null, the
// answer SDP in accepted, publisher ids as strings.
//
// window.CONFIG = {ws}: the router's /webrtcgateway/ws URL.
// State for the test: window.sylk (see info()).
'use strict';
(() => {
  const cfg = window.CONFIG;
  const S = {
    protocol: '', ready: false, closed: '',
    errors: [], // what sylkrtc.js would trip over, and what failed here
    log: [], // short event log
    pings: { sent: 0, acked: 0, errors: 0, missed: 0, maxMissed: 0 },
    trickles: { sent: 0, acked: 0, errors: 0, ends: 0 },
    registration: {}, // account -> last registration-state (and reason)
    serverSdps: [], // {what, candidates, sections, noSsrc}
    clientSdpCandidates: 0, // candidates in SDPs this page sent (sylkrtc.js: none)
    unknownTransactions: 0,
    calls: new Map(),
    conferences: new Map(),
    feeds: new Map(),
  };
  window.sylk = S;
  const fail = (what, err) => {
    const msg = what + (err === undefined ? '' : ': ' + ((err && err.message) || String(err)));
    console.error(msg);
    S.errors.push(msg);
  };
  const note = (msg) => {
    if (S.log.length < 500) S.log.push(((performance.now() / 1000).toFixed(2)) + ' ' + msg);
  };

  // The local media: the app's localStream.
  S.media = navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 15 } });

  // Connection: the subprotocol, ready-event, transactions, pings.
  let ws = null;
  const pending = new Map();
  let readyResolve, readyReject;
  S.readyPromise = new Promise((resolve, reject) => { readyResolve = resolve; readyReject = reject; });
  const sendRaw = (m) => ws.send(JSON.stringify(m));
  const request = (req) => {
    if (!S.ready) return Promise.reject(new Error('Connection is not ready'));
    req.transaction = crypto.randomUUID();
    return new Promise((resolve, reject) => {
      pending.set(req.transaction, { type: req.sylkrtc, resolve, reject });
      sendRaw(req);
    });
  };
  S.connect = () => {
    ws = new WebSocket(cfg.ws, 'sylkRTC-2');
    ws.onopen = () => {
      S.protocol = ws.protocol;
      if (ws.protocol !== 'sylkRTC-2') fail('the 101 did not echo sylkRTC-2 (got "' + ws.protocol + '")');
      note('socket open');
      // sylkrtc.js pings every 5 s from socket open; 6 unanswered and it
      // reconnects, dropping every account, call and conference.
      S.pingTimer = setInterval(() => {
        if (!S.ready) return;
        S.pings.sent++;
        S.pings.missed++;
        S.pings.maxMissed = Math.max(S.pings.maxMissed, S.pings.missed);
        if (S.pings.missed > 6) fail('6 pings unanswered: sylkrtc.js would reconnect');
        request({ sylkrtc: 'ping' }).then(() => { S.pings.acked++; S.pings.missed = 0; },
          () => { S.pings.errors++; S.pings.missed = 0; });
      }, 5000);
    };
    ws.onclose = (e) => {
      S.closed = 'code ' + e.code + ' ' + e.reason;
      S.ready = false;
      clearInterval(S.pingTimer);
      note('socket closed ' + S.closed);
      if (!S.everReady) readyReject(new Error('the socket closed before ready-event: ' + S.closed + ' (handshake refused? see the console)'));
      for (const p of pending.values()) p.reject(new Error('Connection closed'));
      pending.clear();
    };
    ws.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch (err) {
        fail('server sent invalid JSON', err);
        return;
      }
      if (!m || !m.sylkrtc) return; // ignored, as sylkrtc.js does
      try {
        dispatch(m);
      } catch (err) {
        fail('handling ' + m.sylkrtc + '/' + (m.event || ''), err);
      }
    };
    return S.readyPromise;
  };
  const dispatch = (m) => {
    switch (m.sylkrtc) {
      case 'ready-event':
        S.ready = true;
        S.everReady = true;
        note('ready');
        readyResolve();
        return;
      case 'ack':
      case 'error': {
        const p = pending.get(m.transaction);
        if (!p) {
          S.unknownTransactions++;
          return;
        }
        pending.delete(m.transaction);
        if (m.sylkrtc === 'ack') p.resolve(m);
        else p.reject(new Error(m.error));
        return;
      }
      case 'account-event':
        return accountEvent(m);
      case 'session-event':
        return sessionEvent(m);
      case 'videoroom-event':
        return roomEvent(m);
    }
  };

  // SDP checks.
  const candidatesIn = (sdp) => (sdp.match(/^a=candidate:/gm) || []).length;
  const serverSdp = (what, sdp, feedOffer) => {
    if (typeof sdp !== 'string' || !sdp) {
      fail(what + ': no sdp');
      return false;
    }
    const sections = sdp.split(/\r\n(?=m=)/).slice(1);
    const r = { what, candidates: candidatesIn(sdp), sections: sections.length, noSsrc: [] };
    if (r.candidates === 0) fail(what + ': the server SDP has no candidates (the server never trickles in sylkRTC-2)');
    if (feedOffer) {
      // sylkrtc.js's fixmsid iterates media.ssrcs of every m-section.
      sections.forEach((s, i) => { if (!/^a=ssrc:/m.test(s)) r.noSsrc.push(i); });
      if (r.noSsrc.length) fail(what + ': m-sections ' + r.noSsrc.join(',') + ' have no a=ssrc (sylkrtc.js: media.ssrcs is not iterable)');
    }
    S.serverSdps.push(r);
    return true;
  };
  const localSdp = (pc) => {
    const sdp = pc.localDescription.sdp;
    S.clientSdpCandidates += candidatesIn(sdp);
    return sdp;
  };

  // Trickle: one request per candidate, [] at the end; an error tears the
  // call, conference or feed down, as in sylkrtc.js.
  const trickle = (type, pc, sessionOf, onError) => {
    pc.onicecandidate = (e) => {
      const c = e.candidate;
      const candidates = c === null ? [] : [{ candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment }];
      S.trickles.sent++;
      if (c === null) S.trickles.ends++;
      request({ sylkrtc: type, session: sessionOf(), candidates }).then(() => { S.trickles.acked++; }, (err) => {
        S.trickles.errors++;
        fail(type + ' refused (sylkrtc.js tears down)', err);
        onError(err);
      });
    };
  };

  // Remote media, played (Chromium measures totalAudioEnergy only then).
  const player = (tag, owner) => {
    const el = document.createElement(tag);
    el.autoplay = true;
    el.playsInline = true;
    el.dataset.owner = owner;
    document.body.append(el);
    return el;
  };
  const receive = (obj, pc) => {
    obj.audio = player('audio', obj.id);
    obj.video = player('video', obj.id);
    obj.video.muted = true;
    pc.ontrack = (e) => {
      obj.tracks.push(e.track.kind);
      (e.track.kind === 'video' ? obj.video : obj.audio).srcObject = new MediaStream([e.track]);
    };
  };

  // Accounts.
  S.addAccount = async (account, ha1) => {
    await request({ sylkrtc: 'account-add', account, password: ha1, display_name: account.split('@')[0], user_agent: 'SylkRTC (e2e page on Chromium)' });
    const registered = new Promise((resolve, reject) => {
      S.registration[account] = { state: null, wait: { resolve, reject } };
    });
    await request({ sylkrtc: 'account-register', account });
    return registered;
  };
  const accountEvent = (m) => {
    note('account-event ' + m.event + ' ' + (m.state || m.session || ''));
    switch (m.event) {
      case 'registration-state': {
        const r = S.registration[m.account] || (S.registration[m.account] = {});
        r.state = m.state;
        r.reason = m.reason;
        if (m.state === 'registered') {
          // sylkrtc.js fetches the address book at once; an error is harmless.
          request({ sylkrtc: 'account-fetch-addressbook', account: m.account }).catch(() => {});
          if (r.wait) r.wait.resolve(m.state);
        } else if (m.state === 'failed' && r.wait) {
          r.wait.reject(new Error('registration failed: ' + m.reason));
        }
        return;
      }
      case 'incoming-session':
        incoming(m).catch((err) => fail('incoming-session', err));
        return;
    }
  };

  // 1:1 calls.
  const newCall = (id, account, direction, peer, pc) => {
    const call = { id, account, direction, peer, pc, states: [], reason: '', tracks: [], sdpInAccepted: false };
    S.calls.set(id, call);
    receive(call, pc);
    trickle('session-trickle', pc, () => id, () => endCall(call, 'trickle refused'));
    return call;
  };
  const endCall = (call, reason) => {
    if (!call.reason) call.reason = reason;
    if (call.pc.signalingState !== 'closed') call.pc.close();
  };
  S.call = async (account, uri) => {
    const stream = await S.media;
    const id = crypto.randomUUID();
    const pc = new RTCPeerConnection({ iceServers: [] });
    const call = newCall(id, account, 'outgoing', uri, pc);
    for (const t of stream.getTracks()) pc.addTrack(t, stream);
    await pc.setLocalDescription(await pc.createOffer());
    request({ sylkrtc: 'session-create', account, session: id, uri, sdp: localSdp(pc) })
      .catch((err) => { fail('session-create', err); endCall(call, 'Error: ' + err.message); });
    return id;
  };
  const incoming = async (m) => {
    if (!m.originator || typeof m.originator.uri !== 'string') fail('incoming-session without originator.uri');
    if ('headers' in m && (m.headers === null || typeof m.headers !== 'object')) fail('incoming-session headers is ' + JSON.stringify(m.headers) + ' (Object.keys throws)');
    if (!serverSdp('incoming-session', m.sdp, false)) return;
    const pc = new RTCPeerConnection({ iceServers: [] });
    const call = newCall(m.session, m.account, 'incoming', m.originator.uri, pc);
    call.mediaTypes = m.sdp.split(/\r\n(?=m=)/).slice(1)
      .filter((s) => !/^m=\S+ 0 /.test(s) && /^a=sendrecv/m.test(s)).map((s) => s.slice(2, s.indexOf(' ')));
    call.states.push('incoming');
    // The app answers at once (call.answer({localStream})).
    const stream = await S.media;
    await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
    for (const t of stream.getTracks()) pc.addTrack(t, stream);
    await pc.setLocalDescription(await pc.createAnswer());
    request({ sylkrtc: 'session-answer', session: m.session, sdp: localSdp(pc) })
      .catch((err) => { fail('session-answer', err); S.hangup(m.session); });
  };
  const sessionEvent = (m) => {
    const call = S.calls.get(m.session);
    if (!call) return;
    if (m.event !== 'state') return;
    note('call ' + call.direction + ' ' + m.state + (m.reason ? ' ' + m.reason : ''));
    call.states.push(m.state);
    switch (m.state) {
      case 'accepted':
        if (call.direction === 'outgoing') {
          call.sdpInAccepted = typeof m.sdp === 'string' && m.sdp !== '';
          if (!serverSdp('accepted (call)', m.sdp, false)) return;
          call.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp }).catch((err) => {
            fail('accepted: setRemoteDescription', err);
            S.hangup(call.id);
          });
        }
        return;
      case 'terminated':
        endCall(call, m.reason || 'unspecified reason');
        return;
    }
  };
  S.hangup = (id) => request({ sylkrtc: 'session-terminate', session: id });

  // Video rooms.
  S.join = async (account, uri) => {
    const stream = await S.media;
    const id = crypto.randomUUID();
    const pc = new RTCPeerConnection({ iceServers: [] });
    const conf = { id, account, uri, pc, states: [], participants: new Map(), joined: [], left: [], accepted: null };
    S.conferences.set(id, conf);
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
    trickle('videoroom-session-trickle', pc, () => id, () => pc.close());
    await pc.setLocalDescription(await pc.createOffer());
    request({ sylkrtc: 'videoroom-join', account, session: id, uri, sdp: localSdp(pc), audio: true, video: true })
      .catch((err) => { fail('videoroom-join', err); pc.close(); });
    return id;
  };
  S.leave = async (id) => {
    const conf = S.conferences.get(id);
    await request({ sylkrtc: 'videoroom-leave', session: id });
    // SylkServer sends session-state terminated before the ack.
    conf.terminatedBeforeAck = conf.states.includes('terminated');
    conf.pc.close();
    for (const f of S.feeds.values()) if (f.conf === id) f.pc.close();
  };
  const publisherIds = (conf, list, what) => {
    if (!Array.isArray(list)) {
      fail(what + ': publishers is not an array');
      return [];
    }
    return list;
  };
  const roomEvent = (m) => {
    const conf = S.conferences.get(m.session);
    if (!conf) return;
    note('room ' + m.event + (m.state ? ' ' + m.state : '') + (m.feed ? ' feed ' + m.feed.slice(0, 8) : ''));
    switch (m.event) {
      case 'session-state':
        conf.states.push(m.state);
        if (m.state === 'accepted') {
          conf.accepted = { audio: m.audio, video: m.video };
          if (!serverSdp('accepted (room)', m.sdp, false)) return;
          conf.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp }).catch((err) => fail('room accepted: setRemoteDescription', err));
        }
        return;
      case 'initial-publishers':
      case 'publishers-joined':
        for (const p of publisherIds(conf, m.publishers, m.event)) {
          if (typeof p.id !== 'string' || typeof p.uri !== 'string') {
            fail(m.event + ': publisher ' + JSON.stringify(p) + ' lacks a string id or uri');
            continue;
          }
          if (conf.participants.has(p.id)) continue; // known ids are skipped
          conf.participants.set(p.id, p);
          conf.joined.push(p.id);
          attach(conf, p);
        }
        return;
      case 'publishers-left':
        for (const id of publisherIds(conf, m.publishers, m.event)) {
          if (typeof id !== 'string') fail('publishers-left: ' + JSON.stringify(id) + ' is not an id string');
          conf.left.push(id);
          conf.participants.delete(id);
        }
        return;
      case 'feed-attached': {
        const feed = S.feeds.get(m.feed);
        if (!feed) {
          fail('feed-attached for unknown feed ' + m.feed);
          return;
        }
        feed.states.push('attached');
        if (!serverSdp('feed-attached', m.sdp, true)) return;
        answerFeed(conf, feed, m.sdp).catch((err) => fail('feed answer', err));
        return;
      }
      case 'feed-established': {
        const feed = S.feeds.get(m.feed);
        if (feed) feed.states.push('established');
        return;
      }
    }
  };
  const attach = (conf, pub) => {
    const id = crypto.randomUUID();
    const pc = new RTCPeerConnection({ iceServers: [] });
    const feed = { id, conf: conf.id, publisher: pub.id, uri: pub.uri, pc, states: [], tracks: [] };
    S.feeds.set(id, feed);
    receive(feed, pc);
    // The feed's trickle is keyed by the feed id, not the conference's.
    trickle('videoroom-session-trickle', pc, () => id, () => pc.close());
    request({ sylkrtc: 'videoroom-feed-attach', session: conf.id, publisher: pub.id, feed: id })
      .catch((err) => fail('videoroom-feed-attach ' + pub.uri, err));
  };
  const answerFeed = async (conf, feed, sdp) => {
    await feed.pc.setRemoteDescription({ type: 'offer', sdp });
    await feed.pc.setLocalDescription(await feed.pc.createAnswer());
    await request({ sylkrtc: 'videoroom-feed-answer', session: conf.id, feed: feed.id, sdp: localSdp(feed.pc) })
      .catch((err) => { fail('videoroom-feed-answer', err); feed.pc.close(); });
  };

  // Statistics for the test.
  const media = async (pc) => {
    const o = { state: pc.connectionState, audioPackets: 0, totalAudioEnergy: 0, framesDecoded: 0, frameWidth: 0, videoPackets: 0, audioSent: 0, videoSent: 0, local: '', remote: '' };
    if (pc.signalingState === 'closed') return o;
    const st = await pc.getStats();
    st.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        o.audioPackets += r.packetsReceived || 0;
        o.totalAudioEnergy += r.totalAudioEnergy || 0;
      } else if (r.type === 'inbound-rtp' && r.kind === 'video') {
        o.framesDecoded += r.framesDecoded || 0;
        o.frameWidth = r.frameWidth || o.frameWidth;
        o.videoPackets += r.packetsReceived || 0;
      } else if (r.type === 'outbound-rtp') {
        if (r.kind === 'audio') o.audioSent += r.packetsSent || 0;
        else o.videoSent += r.packetsSent || 0;
      } else if (r.type === 'transport' && r.selectedCandidatePairId) {
        const p = st.get(r.selectedCandidatePairId);
        if (p) {
          o.local = (st.get(p.localCandidateId) || {}).address || '';
          o.remote = (st.get(p.remoteCandidateId) || {}).address || '';
        }
      }
    });
    return o;
  };
  S.info = async () => {
    const out = {
      protocol: S.protocol, ready: S.ready, closed: S.closed, errors: S.errors.slice(), pings: Object.assign({}, S.pings),
      trickles: Object.assign({}, S.trickles), registration: {}, serverSdps: S.serverSdps.slice(),
      clientSdpCandidates: S.clientSdpCandidates, unknownTransactions: S.unknownTransactions, calls: [], conferences: [], feeds: [],
    };
    for (const [a, r] of Object.entries(S.registration)) out.registration[a] = { state: r.state, reason: r.reason || '' };
    for (const c of S.calls.values()) {
      out.calls.push(Object.assign({ id: c.id, direction: c.direction, peer: c.peer, states: c.states.slice(), reason: c.reason, tracks: c.tracks.slice(), sdpInAccepted: c.sdpInAccepted, mediaTypes: c.mediaTypes || [] }, await media(c.pc)));
    }
    for (const c of S.conferences.values()) {
      out.conferences.push(Object.assign({ id: c.id, uri: c.uri, states: c.states.slice(), accepted: c.accepted, joined: c.joined.slice(), left: c.left.slice(), terminatedBeforeAck: !!c.terminatedBeforeAck }, await media(c.pc)));
    }
    for (const f of S.feeds.values()) {
      out.feeds.push(Object.assign({ id: f.id, publisher: f.publisher, uri: f.uri, states: f.states.slice(), tracks: f.tracks.slice(), videoWidth: f.video.videoWidth }, await media(f.pc)));
    }
    return out;
  };
})();
