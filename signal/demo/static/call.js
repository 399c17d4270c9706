// A call to the Beep router: POST /join/{conversation}, then GET /connect
// (WebSocket signalling, bare SDP after ICE gathering completed, as the Beep
// README's JavaScript does), one sendrecv audio transceiver with the
// microphone and more recvonly ones, so that several speakers can be heard
// at once (the router fills one "slot" per receiving m-line).
//
// In -dev mode the router takes the caller's identity from ?userid=&clientid=
// on both requests.

/** Random hex string of n bytes. */
export function randomHex(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function identityQuery(userid, clientid) {
  return new URLSearchParams({ userid, clientid }).toString();
}

/** POST /join/{conversation} with the dev identity. */
export async function join(conversation, userid, clientid) {
  const url = `/join/${encodeURIComponent(conversation)}?${identityQuery(userid, clientid)}`;
  const res = await fetch(url, { method: 'POST' });
  if (!res.ok) {
    const text = (await res.text()).trim();
    throw new Error(`join refused (${res.status}${text ? ': ' + text : ''})`);
  }
}

/**
 * The ICE servers the router gives this user (GET /ice-servers: its
 * built-in TURN server with a fresh credential, or none).
 */
export async function iceServers(userid, clientid) {
  try {
    const res = await fetch(`/ice-servers?${identityQuery(userid, clientid)}`, { cache: 'no-store' });
    if (!res.ok) return [];
    const list = await res.json();
    return Array.isArray(list) ? list : [];
  } catch (_) {
    return []; // direct connections still work
  }
}

/** Resolves when ICE gathering is complete, or after ms. */
function gathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/**
 * One call. Events:
 *  - "state": detail {state, text}; state is one of joining, microphone,
 *    connecting, connected, disconnected, failed, closed
 *  - "track": detail {index, track} for receiving transceiver index
 */
export class Call extends EventTarget {
  constructor({ conversation, userid, clientid, slots = 3, processing = true, deviceId = '', muted = false }) {
    super();
    this.deviceId = deviceId;
    this.muted = muted;
    this.conversation = conversation;
    this.userid = userid;
    this.clientid = clientid;
    this.slots = slots;
    this.processing = processing;
    this.state = 'idle';
    this.pc = null;
    this.ws = null;
    this.stream = null;
    this.transceivers = [];
    this.closed = false;
  }

  setState(state, text) {
    if (this.closed && state !== 'closed') return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, text } }));
  }

  fail(err) {
    if (this.closed) return;
    const text = err instanceof Error ? err.message : String(err);
    this.setState('failed', text);
    this.teardown();
  }

  async start() {
    try {
      this.setState('joining', 'Joining the conversation…');
      await join(this.conversation, this.userid, this.clientid);
      if (this.closed) return;

      this.setState('microphone', 'Waiting for the microphone…');
      this.stream = await this.microphone(this.deviceId);
      if (this.closed) { this.stopMicrophone(); return; }

      const servers = await iceServers(this.userid, this.clientid);
      if (this.closed) { this.stopMicrophone(); return; }
      const pc = new RTCPeerConnection({ iceServers: servers });
      this.pc = pc;
      const [track] = this.stream.getAudioTracks();
      track.enabled = !this.muted;
      this.transceivers.push(pc.addTransceiver(track, { direction: 'sendrecv', streams: [this.stream] }));
      for (let i = 1; i < this.slots; i++) {
        this.transceivers.push(pc.addTransceiver('audio', { direction: 'recvonly' }));
      }
      pc.ontrack = (e) => {
        const index = this.transceivers.indexOf(e.transceiver);
        if (index >= 0) this.dispatchEvent(new CustomEvent('track', { detail: { index, track: e.track } }));
      };
      pc.onconnectionstatechange = () => this.onConnectionState();

      this.setState('connecting', 'Connecting to the router…');
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 5000);
      if (this.closed) return;
      this.signal(pc.localDescription.sdp);
    } catch (err) {
      this.fail(err);
    }
  }

  signal(offer) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/connect?${identityQuery(this.userid, this.clientid)}`);
    this.ws = ws;
    ws.onopen = () => ws.send(offer);
    ws.onmessage = async (e) => {
      let sdp = String(e.data);
      if (sdp.startsWith('answer::')) sdp = sdp.slice('answer::'.length);
      if (sdp.startsWith('ice::')) return; // bare SDP carries every candidate
      try {
        await this.pc.setRemoteDescription({ type: 'answer', sdp });
      } catch (err) {
        this.fail(new Error(`bad answer from the router: ${err.message}`));
      }
    };
    ws.onclose = (e) => {
      this.ws = null;
      // The router closes the socket with 1000 once the media connected.
      if (e.code !== 1000 && this.pc && this.pc.connectionState !== 'connected') {
        this.fail(new Error(`signalling closed (${e.code}${e.reason ? ': ' + e.reason : ''})`));
      }
    };
  }

  onConnectionState() {
    const s = this.pc ? this.pc.connectionState : 'closed';
    switch (s) {
      case 'connected': this.setState('connected', 'Connected'); break;
      case 'disconnected': this.setState('disconnected', 'Connection interrupted, trying to recover…'); break;
      case 'failed': this.fail(new Error('Connection to the router failed')); break;
      default: break;
    }
  }

  /**
   * Levels now: {mic, slots: [{level, packets, energy}]}, levels linear 0..1.
   * Slot i is receiving transceiver i.
   */
  async levels() {
    const out = { mic: 0, slots: this.transceivers.map(() => ({ level: 0, packets: 0, energy: 0 })) };
    if (!this.pc || this.pc.connectionState === 'closed') return out;
    const byMid = new Map(this.transceivers.map((t, i) => [t.mid, i]));
    const stats = await this.pc.getStats();
    stats.forEach((r) => {
      if (r.type === 'media-source' && r.kind === 'audio' && typeof r.audioLevel === 'number') {
        out.mic = r.audioLevel;
      } else if (r.type === 'inbound-rtp' && r.kind === 'audio' && byMid.has(r.mid)) {
        out.slots[byMid.get(r.mid)] = {
          level: r.audioLevel || 0,
          packets: r.packetsReceived || 0,
          energy: r.totalAudioEnergy || 0,
        };
      }
    });
    return out;
  }

  /** A microphone stream: the device deviceId, or the default one. */
  microphone(deviceId) {
    const p = this.processing;
    const audio = { echoCancellation: p, noiseSuppression: p, autoGainControl: p };
    if (deviceId) audio.deviceId = { exact: deviceId };
    return navigator.mediaDevices.getUserMedia({ audio, video: false });
  }

  /** Mute: the microphone track sends silence (the other side hears nothing). */
  setMuted(on) {
    this.muted = on;
    if (this.stream) for (const t of this.stream.getAudioTracks()) t.enabled = !on;
  }

  /** Sends from another microphone, without renegotiation. */
  async switchMicrophone(deviceId) {
    this.deviceId = deviceId;
    if (!this.stream || !this.transceivers.length) return;
    const stream = await this.microphone(deviceId);
    if (this.closed) { stream.getTracks().forEach((t) => t.stop()); return; }
    const [track] = stream.getAudioTracks();
    track.enabled = !this.muted;
    await this.transceivers[0].sender.replaceTrack(track);
    this.stopMicrophone();
    this.stream = stream;
  }

  stopMicrophone() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }

  teardown() {
    if (this.ws) { try { this.ws.close(); } catch (_) { /* closing anyway */ } }
    this.ws = null;
    if (this.pc) this.pc.close();
    this.stopMicrophone();
  }

  close() {
    if (this.closed) return;
    this.teardown();
    this.closed = true;
    this.state = 'closed';
    this.dispatchEvent(new CustomEvent('state', { detail: { state: 'closed', text: 'Not connected' } }));
  }
}
