package rtc

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v3"
	"golang.org/x/net/ipv4"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
)

// gcmTestKeys are AES-GCM master keys of profile that are not all one byte.
func gcmTestKeys(profile srtp.ProtectionProfile) srtpKeys {
	keyLen := 16
	if profile == srtp.ProtectionProfileAeadAes256Gcm {
		keyLen = 32
	}
	k := srtpKeys{key: make([]byte, keyLen), salt: make([]byte, 12), profile: profile}
	for i := range k.key {
		k.key[i] = byte(i*37 + 11)
	}
	for i := range k.salt {
		k.salt[i] = byte(i*53 + 5)
	}
	return k
}

// TestGCMSealerMatchesPion checks that the shared sealer produces, byte for
// byte, what a pion/srtp v3 context encrypts for the same keys, and that a
// pion context decrypts it: for both AES-GCM profiles, two SSRCs on one
// sealer, with and without the audio level extension, across a sequence
// number wrap (rollover counter 1) and at a rollover counter of 7.
func TestGCMSealerMatchesPion(t *testing.T) {
	for _, profile := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm} {
		t.Run(profile.String(), func(t *testing.T) {
			keys := gcmTestKeys(profile)
			g, err := newGCMSealer(keys)
			if err != nil {
				t.Fatal(err)
			}
			var nonce [gcmNonceLen]byte
			sealerMatchesPion(t, keys, func(buf []byte, hdrLen, n int, ssrc uint32, index uint64) []byte {
				return g.seal(buf, hdrLen, n, ssrc, index, &nonce)
			})
		})
	}
}

// TestCMSealerMatchesPion is TestGCMSealerMatchesPion for the AES-CM
// sealer (AES_CM_128_HMAC_SHA1_80, what Chromium negotiates), two
// down-tracks' states on one sealer.
func TestCMSealerMatchesPion(t *testing.T) {
	keys := srtpKeys{key: make([]byte, cmKeyLen), salt: make([]byte, cmSaltLen), profile: srtp.ProtectionProfileAes128CmHmacSha1_80}
	for i := range keys.key {
		keys.key[i] = byte(i*37 + 11)
	}
	for i := range keys.salt {
		keys.salt[i] = byte(i*53 + 5)
	}
	c, err := newCMSealer(keys)
	if err != nil {
		t.Fatal(err)
	}
	states := map[uint32]*cmState{}
	sealerMatchesPion(t, keys, func(buf []byte, hdrLen, n int, ssrc uint32, index uint64) []byte {
		if states[ssrc] == nil {
			states[ssrc] = c.newState()
		}
		return c.seal(buf, hdrLen, n, ssrc, index, states[ssrc])
	})
}

// sealerMatchesPion checks seal against pion/srtp v3's context for keys.
func sealerMatchesPion(t *testing.T, keys srtpKeys, seal func(buf []byte, hdrLen, n int, ssrc uint32, index uint64) []byte) {
	enc, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
	if err != nil {
		t.Fatal(err)
	}
	type pkt struct {
		ssrc  uint32
		index uint64 // ROC<<16 | SEQ
		level uint8  // extension id; 0: none
	}
	var pkts []pkt
	for i := uint64(0); i < 12; i++ { // 65530 … 65535, then 0 … 5 with ROC 1
		pkts = append(pkts, pkt{ssrc: 0x11223344, index: 65530 + i, level: uint8(i % 2 * 3)})
		pkts = append(pkts, pkt{ssrc: 4242, index: 65530 + i, level: 1})
	}
	const roc7 = 7 << 16
	for i := uint64(0); i < 3; i++ {
		pkts = append(pkts, pkt{ssrc: 4242, index: roc7 | (1000 + i), level: 14})
	}
	for i, p := range pkts {
		if p.index == roc7|1000 {
			// A receiver cannot follow a jump of 6 wraps: both sides
			// are told, as signalling would (RFC 4568's ROC).
			enc.SetROC(p.ssrc, 7)
			dec.SetROC(p.ssrc, 7)
		}
		payload := bytes.Repeat([]byte{byte(i)}, 40+i)
		buf := make([]byte, 200)
		hdrLen := putHeader(buf, 111, i%3 == 0, uint16(p.index), uint32(i)*960, p.ssrc, p.level, byte(i))
		n := hdrLen + copy(buf[hdrLen:], payload)
		plain := append([]byte(nil), buf[:n]...)
		got := seal(buf, hdrLen, n, p.ssrc, p.index)

		want, err := enc.EncryptRTP(nil, plain, nil)
		if err != nil {
			t.Fatal(err)
		}
		if roc, _ := enc.ROC(p.ssrc); uint64(roc) != p.index>>16 {
			t.Fatalf("packet %d: pion's ROC %d, want %d", i, roc, p.index>>16)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("packet %d (ssrc %d, index %#x): sealer\n%x\npion\n%x", i, p.ssrc, p.index, got, want)
		}
		back, err := dec.DecryptRTP(nil, got, nil)
		if err != nil {
			t.Fatalf("packet %d (index %#x) does not decrypt: %v", i, p.index, err)
		}
		if !bytes.Equal(back, plain) {
			t.Fatalf("packet %d decrypts to %x, want %x", i, back, plain)
		}
	}
}

// TestGCMIndex checks SRTP packet indexes of extended sequence numbers: the
// rollover counter starts at 0 with the down-track's first packet, counts
// every wrap since, and there is none before the first packet or past 2^48.
func TestGCMIndex(t *testing.T) {
	for _, tc := range []struct {
		name       string
		seq, first uint64
		want       uint64
		ok         bool
	}{
		{"the first packet", 65541, 65541, 5, true},
		{"in order", 65542, 65541, 6, true},
		{"before the first", 65540, 65541, 0, false},
		{"first in the second round", 131069, 131069, 65533, true},
		{"across the wrap", 131072, 131069, 1 << 16, true},
		{"two wraps on", 196608 + 9, 131069, 2<<16 | 9, true},
		{"first of all at 0", 65536, 65536, 0, true},
		{"last of a round", 65536 + 65535, 65536, 65535, true},
		{"after a switch, a seq offset far on", 1<<40 | 17, 65541, 1<<40 | 17 - 65536, true},
		{"the last index of the key", 65536 + maxSRTPIndex - 1, 65536, maxSRTPIndex - 1, true},
		{"past the key's packets", 65536 + maxSRTPIndex, 65536, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := srtpIndex(tc.seq, tc.first)
			if ok != tc.ok || got != tc.want {
				t.Errorf("srtpIndex(%d, %d) = %d, %v; want %d, %v", tc.seq, tc.first, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestGCMSealerConcurrent seals with one sealer from several goroutines,
// each for an SSRC and with a nonce buffer of its own, as a peer's
// down-tracks do; every packet must decrypt (run with -race).
func TestGCMSealerConcurrent(t *testing.T) {
	keys := gcmTestKeys(srtp.ProtectionProfileAeadAes256Gcm)
	g, err := newGCMSealer(keys)
	if err != nil {
		t.Fatal(err)
	}
	const writers, packets = 4, 500
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dec, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
			if err != nil {
				errs <- err
				return
			}
			ssrc := uint32(1000 + w)
			var nonce [gcmNonceLen]byte
			buf := make([]byte, 200)
			for i := range packets {
				index := uint64(65000 + i) // wraps at i = 536
				hdrLen := putHeader(buf, 111, false, uint16(index), uint32(i)*960, ssrc, 1, byte(w))
				n := hdrLen + copy(buf[hdrLen:], bytes.Repeat([]byte{byte(w)}, 50))
				plain := append([]byte(nil), buf[:n]...)
				out := g.seal(buf, hdrLen, n, ssrc, index, &nonce)
				back, err := dec.DecryptRTP(nil, out, nil)
				if err != nil || !bytes.Equal(back, plain) {
					errs <- fmt.Errorf("writer %d packet %d: %v", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestPutHeader checks that the header written in place is, byte for byte,
// what rtp.Header.MarshalTo writes for the header DownTrack.header builds.
func TestPutHeader(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pt       uint8
		marker   bool
		seq      uint16
		ts, ssrc uint32
		levelID  uint8
		level    byte
	}{
		{"plain", 111, false, 1, 960, 4242, 0, 0},
		{"marker", 111, true, 2, 1920, 4242, 0, 0},
		{"level", 111, false, 3, 2880, 4242, 1, 0x85},
		{"level id 14, marker", 96, true, 65535, 0xffffffff, 0xffffffff, 14, 0xff},
		{"payload type 127, zeros", 127, false, 0, 0, 0, 0, 0},
		{"level 0 (loudest)", 0, true, 0x8000, 0x80000000, 1, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &DownTrack{ssrc: tc.ssrc, levelID: tc.levelID}
			h := s.header(outHeader{seq: 7<<16 | uint64(tc.seq), ts: tc.ts, pt: tc.pt, marker: tc.marker, level: tc.level, hasLevel: true})
			want, err := h.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			buf := bytes.Repeat([]byte{0xaa}, maxHeader+4)
			n := putHeader(buf, tc.pt, tc.marker, tc.seq, tc.ts, tc.ssrc, tc.levelID, tc.level)
			if !bytes.Equal(buf[:n], want) {
				t.Errorf("putHeader\n%x\nMarshalTo\n%x", buf[:n], want)
			}
			if buf[n] != 0xaa {
				t.Errorf("wrote past its length %d", n)
			}
		})
	}
}

// TestSRTPKeysRefused checks which sessions get the shared sealer: only
// the AES-GCM ones, with their key and salt sizes. A down-track of a
// session with another profile encrypts with a pion context of its own
// (what it sends decrypts: TestDirectEgress).
func TestSRTPKeysRefused(t *testing.T) {
	gcm := gcmTestKeys(srtp.ProtectionProfileAeadAes128Gcm)
	for _, tc := range []struct {
		name string
		keys srtpKeys
	}{
		{"AES_CM_128_HMAC_SHA1_80", srtpKeys{key: make([]byte, 16), salt: make([]byte, 14), profile: srtp.ProtectionProfileAes128CmHmacSha1_80}},
		{"AES_CM_128_HMAC_SHA1_32", srtpKeys{key: make([]byte, 16), salt: make([]byte, 14), profile: srtp.ProtectionProfileAes128CmHmacSha1_32}},
		{"AES-128-GCM with a short key", srtpKeys{key: gcm.key[:8], salt: gcm.salt, profile: gcm.profile}},
		{"AES-256-GCM with a 128-bit key", srtpKeys{key: gcm.key, salt: gcm.salt, profile: srtp.ProtectionProfileAeadAes256Gcm}},
		{"AES-128-GCM with a 14-byte salt", srtpKeys{key: gcm.key, salt: make([]byte, 14), profile: gcm.profile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := newGCMSealer(tc.keys)
			if g != nil || !errors.Is(err, errNoSealer) {
				t.Errorf("newGCMSealer: %v, %v; want errNoSealer", g, err)
			}
		})
	}
	for _, tc := range []struct {
		name string
		keys srtpKeys
	}{
		{"AES_CM_128_HMAC_SHA1_32", srtpKeys{key: make([]byte, 16), salt: make([]byte, 14), profile: srtp.ProtectionProfileAes128CmHmacSha1_32}},
		{"AEAD_AES_128_GCM", gcm},
		{"AES_CM_128_HMAC_SHA1_80 with a short key", srtpKeys{key: make([]byte, 8), salt: make([]byte, 14), profile: srtp.ProtectionProfileAes128CmHmacSha1_80}},
		{"AES_CM_128_HMAC_SHA1_80 with a 12-byte salt", srtpKeys{key: make([]byte, 16), salt: make([]byte, 12), profile: srtp.ProtectionProfileAes128CmHmacSha1_80}},
	} {
		t.Run("cm/"+tc.name, func(t *testing.T) {
			c, err := newCMSealer(tc.keys)
			if c != nil || !errors.Is(err, errNoSealer) {
				t.Errorf("newCMSealer: %v, %v; want errNoSealer", c, err)
			}
		})
	}
	for _, tc := range []struct {
		name    string
		profile srtp.ProtectionProfile
		want    string // gcm, cm: the peer's sealer; context: a pion context
	}{
		{"AEAD_AES_128_GCM", srtp.ProtectionProfileAeadAes128Gcm, "gcm"},
		{"AEAD_AES_256_GCM", srtp.ProtectionProfileAeadAes256Gcm, "gcm"},
		{"AES_CM_128_HMAC_SHA1_80", srtp.ProtectionProfileAes128CmHmacSha1_80, "cm"},
		{"AES_CM_128_HMAC_SHA1_32", srtp.ProtectionProfileAes128CmHmacSha1_32, "context"},
	} {
		t.Run("down-track/"+tc.name, func(t *testing.T) {
			s, tr, recv, e := directDownTrack(t, tc.profile)
			p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: 9}, Payload: []byte{1}}
			if ok, err := s.Write(tr.SendBuffer(), tr, p, 0, false, time.Now().UnixNano()); !ok || err != nil {
				t.Fatal(ok, err)
			}
			receive(t, recv)
			got := "context"
			switch {
			case s.sealer != nil && s.sealer == e.sealer && s.cm == nil && s.srtp == nil:
				got = "gcm"
			case s.cm != nil && s.cm == e.cm && s.sealer == nil && s.srtp == nil:
				got = "cm"
			case s.srtp == nil:
				got = "nothing"
			}
			if got != tc.want {
				t.Errorf("the down-track encrypts with %s (sealer %p, peer's %p; cm %p, peer's %p; context %p), want %s", got, s.sealer, e.sealer, s.cm, e.cm, s.srtp, tc.want)
			}
		})
	}
}

// writeOK makes src the source of s, as the speaker policy does, and
// writes it a packet, which must go out.
func writeOK(t *testing.T, s *DownTrack, src *UpTrack, seq uint16, ts uint32, payload byte, now int64) {
	t.Helper()
	s.SetSource(src)
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: ts}, Payload: []byte{payload, payload}}
	if ok, err := s.Write(src.SendBuffer(), src, p, 0x90, true, now); !ok || err != nil {
		t.Fatalf("packet %d of %s not written: %v %v", seq, src.ID, ok, err)
	}
}

// TestDirectHeaderAcrossSwitch checks the stream a receiver gets on the
// direct path while the down-track switches speakers, across its own
// sequence number wrap: every packet decrypts with the session's keys
// (so its SRTP index is right), one SSRC, sequence numbers one apart,
// timestamps forward by at least a frame, the marker on each switch.
func TestDirectHeaderAcrossSwitch(t *testing.T) {
	s, a, recv, e := directDownTrack(t, srtp.ProtectionProfileAeadAes128Gcm)
	b := NewUpTrack(claim.Claim{UserID: "second", ClientID: "b"}, 2, 1)
	dec, err := srtp.CreateContext(e.key, e.salt, e.profile)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	type step struct {
		src     *UpTrack
		seq     uint16
		ts      uint32
		payload byte
	}
	steps := []step{
		{a, 65533, 1000, 1}, {a, 65534, 1960, 2}, // the down-track starts at 65533
		{b, 700, 50, 3}, {b, 701, 1010, 4}, // switch; out 65535, 0 (ROC 1)
		{a, 65535, 2920, 5}, {a, 0, 3880, 6}, // back to a, its own wrap
		{b, 702, 1970, 7},
	}
	marker := map[int]bool{0: true, 2: true, 4: true, 6: true}
	var prev rtp.Header
	for i, st := range steps {
		now += int64(20 * time.Millisecond)
		writeOK(t, s, st.src, st.seq, st.ts, st.payload, now)
		plain, err := dec.DecryptRTP(nil, receive(t, recv), nil)
		if err != nil {
			t.Fatalf("packet %d does not decrypt: %v", i, err)
		}
		var got rtp.Packet
		if err := got.Unmarshal(plain); err != nil {
			t.Fatal(err)
		}
		if got.SSRC != 4242 || got.PayloadType != 111 || got.Marker != marker[i] || !bytes.Equal(got.Payload, []byte{st.payload, st.payload}) {
			t.Errorf("packet %d: ssrc %d pt %d marker %v payload %x", i, got.SSRC, got.PayloadType, got.Marker, got.Payload)
		}
		if lv := got.GetExtension(1); len(lv) != 1 || lv[0] != 0x90 {
			t.Errorf("packet %d: audio level %x", i, lv)
		}
		if i > 0 {
			if got.SequenceNumber != prev.SequenceNumber+1 {
				t.Errorf("packet %d: seq %d after %d", i, got.SequenceNumber, prev.SequenceNumber)
			}
			if d := got.Timestamp - prev.Timestamp; d < 960 || d > 1<<31 {
				t.Errorf("packet %d: timestamp %d after %d", i, got.Timestamp, prev.Timestamp)
			}
		}
		prev = got.Header
	}
	if roc, _ := dec.ROC(4242); roc != 1 {
		t.Errorf("receiver's rollover counter %d, want 1", roc)
	}
}

// TestLateBeforeFirst checks that a late packet of a source from before its
// first packet written is dropped, not sent: before the down-track's first
// packet (it would have no SRTP index) and after a switch, where it would
// fill a sequence number the old source left unsent with the new source's
// older audio. On the direct path and through pion.
func TestLateBeforeFirst(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(map[bool]string{true: "direct", false: "pion"}[direct], func(t *testing.T) {
			s, a, recv, _ := directDownTrack(t, srtp.ProtectionProfileAeadAes128Gcm)
			w := &recorder{}
			if !direct {
				s.peer.egress.Store(nil)
				s.writer = w
			}
			b := NewUpTrack(claim.Claim{UserID: "second", ClientID: "b"}, 2, 1)
			now := time.Now().UnixNano()
			late := func(src *UpTrack, seq uint16) {
				t.Helper()
				p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq}, Payload: []byte{0xee}}
				if ok, err := s.Write(src.SendBuffer(), src, p, 0, false, now); ok || err != nil {
					t.Errorf("late packet %d of %s: written %v, err %v; want dropped", seq, src.ID, ok, err)
				}
			}
			writeOK(t, s, a, 5, 0, 1, now)
			late(a, 3)
			late(a, 65534) // before the first, across the wrap
			writeOK(t, s, a, 6, 960, 2, now)
			writeOK(t, s, a, 8, 2880, 3, now) // 7 lost: out 7 left unsent
			writeOK(t, s, b, 100, 0, 4, now)  // out 9
			late(b, 98)                       // would be out 7
			writeOK(t, s, b, 101, 960, 5, now)

			var seqs []uint16
			if direct {
				for range 5 {
					var p rtp.Packet
					if err := p.Unmarshal(receive(t, recv)); err != nil {
						t.Fatal(err)
					}
					seqs = append(seqs, p.SequenceNumber)
				}
				if err := recv.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				if n, err := recv.Read(make([]byte, 1500)); err == nil {
					t.Errorf("a sixth datagram of %d bytes", n)
				}
			} else {
				for _, h := range w.hdrs {
					seqs = append(seqs, h.SequenceNumber)
				}
			}
			if want := []uint16{5, 6, 8, 9, 10}; fmt.Sprint(seqs) != fmt.Sprint(want) {
				t.Errorf("sent sequence numbers %v, want %v", seqs, want)
			}
			if n, _, _ := s.Stats(); n != 5 {
				t.Errorf("%d packets counted, want 5", n)
			}
		})
	}
}

// TestDirectWriteAllocs checks that a copy on the direct path, sealed with
// the peer's sealer and sent at once or queued for sendmmsg, allocates
// nothing, with and without a speaker switch.
func TestDirectWriteAllocs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		batched bool
		profile srtp.ProtectionProfile
	}{
		{"gcm/sendto", false, srtp.ProtectionProfileAeadAes128Gcm},
		{"gcm/sendmmsg", true, srtp.ProtectionProfileAeadAes128Gcm},
		{"cm/sendto", false, srtp.ProtectionProfileAes128CmHmacSha1_80},
		{"cm/sendmmsg", true, srtp.ProtectionProfileAes128CmHmacSha1_80},
	} {
		batched := tc.batched
		t.Run(tc.name, func(t *testing.T) {
			s, a, recv, e := directDownTrack(t, tc.profile)
			if batched {
				e.batch = ipv4.NewPacketConn(e.conn)
				e.addr = net.UDPAddrFromAddrPort(e.to)
			}
			drain(t, recv)
			b := NewUpTrack(claim.Claim{UserID: "second", ClientID: "b"}, 2, 1)
			p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111}, Payload: make([]byte, 100)}
			now := time.Now().UnixNano()
			i := 0
			write := func() {
				src := a
				if i%50 >= 25 {
					src = b
				}
				i++
				s.SetSource(src)
				p.SequenceNumber++
				p.Timestamp += 960
				now += int64(20 * time.Millisecond)
				if ok, err := s.Write(src.SendBuffer(), src, p, 0x8a, true, now); !ok || err != nil {
					t.Fatal("not written", err)
				}
				if _, err := src.SendBuffer().Flush(); err != nil {
					t.Fatal(err)
				}
			}
			write() // the buffers are made once
			got := testing.AllocsPerRun(200, write)
			if batched && testutil.Race {
				// Under the race detector sync.Pool drops what it is
				// given at random, and x/net's sendmmsg takes its
				// message headers from one: only the sealing and
				// queueing are judged here, by the sendto case.
				t.Logf("%v allocations per copy (race detector)", got)
			} else if got != 0 {
				t.Errorf("%v allocations per copy, want 0", got)
			}
			if s.sealer == nil && s.cm == nil {
				t.Error("the down-track did not use the peer's sealer")
			}
		})
	}
}

// TestPeerSealer connects a pion client to an Engine: the DTLS-SRTP session
// it negotiates (AEAD_AES_256_GCM, what pion and Chromium list first) gives
// the peer one sealer, shared by the routes of all its down-tracks; and
// what two down-tracks seal with it, across their sequence numbers' wrap,
// the client's own SRTP stack decrypts, in order.
func TestPeerSealer(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Logger: testutil.Logger(t, 8)})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	client, p := connectSubscriber(t, e, 2)

	const packets = 12
	type got struct {
		track int
		seq   uint16
		pl    byte
		err   error
	}
	// Room for every result, so that a reader never blocks: each ends
	// after its packets, or with an error once the client closes.
	results := make(chan got, 2*packets+2)
	client.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		for range packets {
			pkt, _, err := tr.ReadRTP()
			if err != nil {
				results <- got{err: err}
				return
			}
			results <- got{track: int(tr.SSRC()), seq: pkt.SequenceNumber, pl: pkt.Payload[0]}
		}
	})

	p.egressMu.Lock()
	keys, sealer := p.keys, p.sealer
	p.egressMu.Unlock()
	if keys == nil || sealer == nil {
		t.Fatalf("peer keys %v, sealer %v: want the direct path with a sealer", keys, sealer)
	}
	if eg := p.egress.Load(); eg == nil || eg.sealer != sealer {
		t.Fatalf("the peer's route does not use its sealer (%v)", eg)
	}
	t.Logf("SRTP profile %s", keys.profile)

	src := NewUpTrack(claim.Claim{UserID: "speaker", ClientID: "s"}, 1, 1)
	downs := p.DownTracks()
	for _, d := range downs {
		d.SetSource(src)
	}
	now := time.Now().UnixNano()
	for i := range packets {
		pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: uint16(65530 + i), Timestamp: uint32(i * 960)}, Payload: []byte{byte(i), 0xf8, 0xff, 0xfe}}
		now += int64(20 * time.Millisecond)
		if w, _, err := Fanout(downs, src.SendBuffer(), src, pkt, 0x90, true, now); w != 2 || err != nil {
			t.Fatalf("packet %d: %d copies written: %v", i, w, err)
		}
	}
	for _, d := range downs {
		if d.sealer != sealer {
			t.Errorf("down-track %s sealed with %p, not the peer's sealer %p", d.ID(), d.sealer, sealer)
		}
	}
	next := map[int]int{}
	deadline := time.After(10 * time.Second)
	for range 2 * packets {
		select {
		case g := <-results:
			if g.err != nil {
				t.Fatalf("client read: %v", g.err)
			}
			i := next[g.track]
			next[g.track]++
			if g.seq != uint16(65530+i) || g.pl != byte(i) {
				t.Errorf("track %d packet %d: seq %d payload %d, want %d and %d", g.track, i, g.seq, g.pl, uint16(65530+i), i)
			}
		case <-deadline:
			t.Fatalf("the client got %v packets per track of %d", next, packets)
		}
	}
}
