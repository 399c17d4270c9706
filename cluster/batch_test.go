package cluster

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// TestBatchRoundTrip: a batch gives back its frames, in order and byte
// for byte, whatever their versions; batches that do not add up are
// refused whole.
func TestBatchRoundTrip(t *testing.T) {
	frames := [][]byte{
		appendFrame(nil, kindPacket, codecOpus, 1, 42, 7, 1, &publisher{user: "alice", client: "phone"}, rtpPacket(1)),
		appendFrame(nil, kindPacket, codecVP8, 0, 42, 8, 2, &publisher{user: "alice", client: "phone"}, vp8Packet(1)),
		appendFrame(nil, kindPacket, codecOpus, 1, 42, 9, 3, &publisher{user: "carol", client: "ws", part: "p-carol", display: "Carol"}, rtpPacket(5)),
		appendFrame(nil, kindEnd, codecOpus, 0, 42, 7, 4, &publisher{user: "alice", client: "phone"}, nil),
	}
	b := startBatch(nil)
	for _, f := range frames {
		b = appendBatched(b, f)
	}
	if b[0] != frameBatch || b[1] != byte(len(frames)) {
		t.Fatalf("batch header %x", b[:2])
	}
	r, err := readBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for f, ok := r.next(); ok; f, ok = r.next() {
		if _, err := parseFrame(f); err != nil {
			t.Errorf("frame %d: %v", len(got), err)
		}
		got = append(got, f)
	}
	if !slices.EqualFunc(got, frames, bytes.Equal) {
		t.Fatalf("batch gave %d frames %x, want %x", len(got), got, frames)
	}

	for name, bad := range map[string][]byte{
		"empty":           nil,
		"version only":    {frameBatch},
		"no frame":        {frameBatch, 0},
		"count too high":  append([]byte{frameBatch, byte(len(frames) + 1)}, b[2:]...),
		"count too low":   append([]byte{frameBatch, byte(len(frames) - 1)}, b[2:]...),
		"cut":             b[:len(b)-1],
		"cut in a length": b[:batchHeaderLen+1],
		"length past end": append([]byte{frameBatch, 1, 0xff, 0xff}, frames[0]...),
		"not a batch":     frames[0],
	} {
		if _, err := readBatch(bad); err == nil {
			t.Errorf("%s: read", name)
		}
	}
}

// TestBatchReceive: a relay subscription handles a batch's frames in order
// as it would each alone (remote tracks made, packets fed, an end ending a
// track) and counts one message; a frame of it that does not parse (a
// batch within a batch, too) is malformed alone; a batch that does not add
// up is one malformed message and feeds nothing; a batch of this router's
// own frames (echoed by NATS) counts no message in.
func TestBatchReceive(t *testing.T) {
	_, r := bobsRouter(t)
	s := r.relaySub("c-1")
	now := time.Now()
	alice := &publisher{user: "alice", client: "alice-phone"}
	carol := &publisher{user: "carol", client: "carol-phone"}
	inner := appendBatched(startBatch(nil), appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, 1, alice, rtpPacket(9)))
	b := startBatch(nil)
	for _, f := range [][]byte{
		appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, 1, alice, rtpPacket(1)),
		appendFrame(nil, kindPacket, codecOpus, 1, 98, 8, 1, carol, rtpPacket(1)),
		{frameVersion, 9}, // short
		inner,             // nested
		appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, 1, alice, rtpPacket(2)),
		appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, 1, alice, rtpPacket(2)), // a duplicate
		appendFrame(nil, kindEnd, codecOpus, 0, 98, 8, 1, carol, nil),
	} {
		b = appendBatched(b, f)
	}
	s.receive(b, now)
	st := r.node.Stats()
	if st.RelayedIn != 4 || st.NATSIn != 1 || st.Malformed != 2 || st.Duplicates != 1 || st.RemoteTracks != 1 {
		t.Fatalf("after a batch: %+v; want 4 packets in 1 message, 2 malformed, 1 duplicate, alice's track (carol's ended)", st)
	}
	if rt := s.tracks[7]; rt == nil || rt.t == nil || s.tracks[8] != nil {
		t.Fatalf("tracks %v: want alice's (7) alone", s.tracks)
	}

	s.receive(b[:len(b)-1], now)
	s.receive([]byte{frameBatch, 0}, now)
	if st := r.node.Stats(); st.RelayedIn != 4 || st.NATSIn != 1 || st.Malformed != 4 {
		t.Fatalf("after two bad batches: %+v; want each one malformed, nothing fed", st)
	}

	own := appendBatched(appendBatched(startBatch(nil),
		appendFrame(nil, kindPacket, codecOpus, 1, r.node.origin, 5, 1, alice, rtpPacket(1))),
		appendFrame(nil, kindPacket, codecOpus, 1, r.node.origin, 5, 1, alice, rtpPacket(2)))
	s.receive(own, now)
	if st := r.node.Stats(); st.RelayedIn != 4 || st.NATSIn != 1 || st.Malformed != 4 {
		t.Fatalf("after an echo of its own: %+v; want nothing counted", st)
	}
}

// TestInterestBatches: a conversation's entry counts the routers
// interested in it that take no batches, as they come, change and go.
func TestInterestBatches(t *testing.T) {
	var in interest
	in.init()
	e := in.hold("c-1")
	now := time.Now()
	for _, step := range []struct {
		router         string
		batches        bool
		convs          []string
		routers, plain int32
	}{
		{"new", true, []string{"c-1"}, 1, 0},
		{"old", false, []string{"c-1", "c-2"}, 2, 1},
		{"old", false, []string{"c-2"}, 1, 0},
		{"old", false, []string{"c-1"}, 2, 1},
		{"old", false, nil, 1, 0},
		{"new", false, []string{"c-1"}, 1, 1}, // its id, restarted older
		{"new", true, []string{"c-1"}, 1, 0},
	} {
		in.set(step.router, 1, step.batches, step.convs, now, time.Hour)
		if r, p := e.routers.Load(), e.plain.Load(); r != step.routers || p != step.plain {
			t.Fatalf("after %+v: %d routers, %d without batches; want %d, %d", step, r, p, step.routers, step.plain)
		}
	}
	in.release(e)
}

// recordRelayed is a router's pipeline for remote tracks that first
// records each packet's user and sequence number.
type recordRelayed struct {
	inner RelayedSink
	got   chan string
}

func (r *recordRelayed) OpenRelayed(t *room.Track) (rtc.TrackSink, error) {
	ts, err := r.inner.OpenRelayed(t)
	if err != nil {
		return nil, err
	}
	return &recordTrack{TrackSink: ts, user: t.UserID(), got: r.got}, nil
}

type recordTrack struct {
	rtc.TrackSink
	user string
	got  chan<- string
}

func (r *recordTrack) WriteRTP(raw []byte, at time.Time) error {
	r.got <- fmt.Sprintf("%s %d", r.user, binary.BigEndian.Uint16(raw[2:4]))
	return r.TrackSink.WriteRTP(raw, at)
}

// TestQueuedFramesBatched: the frames a sender goroutine finds queued when
// it wakes go out as batches, one subject at a time (at most maxBatch
// frames each, and within the server's max_payload), a keyframe request
// queued among them on its own; router B receives every packet, each
// track's in order. A conversation that a router predating batches
// listens in gets its frames one per message. The frames are queued on a
// shard no goroutine sends from, which is then started: they are all
// there when it wakes.
func TestQueuedFramesBatched(t *testing.T) {
	pad := func(b []byte, n int) []byte { return append(b, make([]byte, n)...) }
	for _, tc := range []struct {
		name string
		tune func(*server.Options)
		// Packets per user and conversation, their payload padding, and
		// the relay messages expected per conversation.
		alice, carol, dave int
		pad                int
		// old: a router that does not take batches listens in c-1.
		old  bool
		want map[string]int
	}{
		{name: "default max_payload", alice: 40, carol: 40, dave: 10,
			want: map[string]int{"c-1": 3, "c-2": 1}}, // 80 frames: 32+32+16
		{name: "max_payload 4096", tune: func(o *server.Options) { o.MaxPayload = 4096 }, alice: 7, pad: 1100,
			want: map[string]int{"c-1": 3}}, // 3 frames of 1.2 kB fit: 3+3 and 1 alone
		{name: "an old router listens", alice: 20, carol: 20, dave: 10, old: true,
			want: map[string]int{"c-1": 40, "c-2": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tune := []func(*server.Options){testutil.JetStream}
			if tc.tune != nil {
				tune = append(tune, tc.tune)
			}
			ns := testutil.StartNATS(t, tune...)
			a := newRouter(t, ns.URL())
			b := newRouter(t, ns.URL())
			rec := &recordRelayed{inner: b.pipe, got: make(chan string, 256)}
			b.node.relayed = rec // before B listens: its subscriptions start after
			frames := watchRelay(t, ns.URL())
			keys := make(chan *nats.Msg, 4)
			knc := connect(t, ns.URL())
			ksub, err := knc.ChanSubscribe("test.key", keys)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = ksub.Unsubscribe() }()
			if err := knc.Flush(); err != nil {
				t.Fatal(err)
			}
			for _, c := range []string{"c-1", "c-2"} {
				if _, err := b.rooms.Enter(c, room.Identity{ID: "p-bob-" + c, Claim: claim.Claim{UserID: "bob", ClientID: c}}, func(room.Event) {}); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 5*time.Second, "B's interest", func() bool {
				return a.node.Relaying("c-1") == 1 && a.node.Relaying("c-2") == 1
			})
			if tc.old {
				announce(t, connect(t, ns.URL()), "old", time.Hour, "c-1") // no Batches
				testutil.Eventually(t, 5*time.Second, "the old router's interest", func() bool { return a.node.Relaying("c-1") == 2 })
			}

			sh := newSendShard(256)
			relays := map[string]*trackRelay{}
			for user, conv := range map[string]string{"alice": "c-1", "carol": "c-1", "dave": "c-2"} {
				if err := a.rooms.Join(user, conv); err != nil {
					t.Fatal(err)
				}
				tr := openRelay(t, a, user).(*trackRelay)
				tr.shard = sh
				relays[user] = tr
			}
			var want []string
			sent := 0
			for i := 1; i <= max(tc.alice, tc.carol, tc.dave); i++ {
				for _, p := range []struct {
					user string
					n    int
				}{{"alice", tc.alice}, {"carol", tc.carol}, {"dave", tc.dave}} {
					if i > p.n {
						continue
					}
					if err := relays[p.user].WriteRTP(pad(rtpPacket(uint16(i)), tc.pad), time.Now()); err != nil {
						t.Fatal(err)
					}
					want = append(want, fmt.Sprintf("%s %d", p.user, i))
					sent++
				}
				if i == 2 { // a keyframe request among the frames
					f := a.node.take(sh)
					f.subj, f.frame, f.b = "test.key", false, binary.BigEndian.AppendUint64(f.b[:0], 77)
					sh.q <- f
				}
			}
			if len(sh.q) != sent+1 {
				t.Fatalf("%d frames queued, want %d and the request", len(sh.q), sent)
			}
			a.node.bg.Add(1)
			go a.node.send(sh)

			msgs := map[string]int{}
			var order []string // of the frames, as published
			for n := 0; n < len(want); {
				m := next(t, frames)
				conv := m.Subject[len(DefaultPrefix+"relay."):]
				msgs[conv]++
				if len(m.Data) > int(a.nc.MaxPayload()) {
					t.Errorf("a message of %d bytes", len(m.Data))
				}
				var in [][]byte
				if r, err := readBatch(m.Data); err == nil {
					for fb, ok := r.next(); ok; fb, ok = r.next() {
						in = append(in, fb)
					}
				} else {
					in = append(in, m.Data) // a frame alone: itself
				}
				for _, fb := range in {
					f, err := parseFrame(fb)
					if err != nil {
						t.Fatalf("message %d on %s: %v", msgs[conv], conv, err)
					}
					order = append(order, fmt.Sprintf("%s %d", f.user, binary.BigEndian.Uint16(f.raw[2:4])))
					n++
				}
			}
			if !maps.Equal(msgs, tc.want) {
				t.Errorf("relay messages by conversation %v, want %v", msgs, tc.want)
			}
			if !sameOrderPerUser(order, want) {
				t.Errorf("frames published in the order %v, want each user's in order: %v", order, want)
			}
			select {
			case m := <-keys:
				if binary.BigEndian.Uint64(m.Data) != 77 {
					t.Errorf("keyframe request %x", m.Data)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the keyframe request did not go out")
			}

			var got []string
			for len(got) < len(want) {
				select {
				case g := <-rec.got:
					got = append(got, g)
				case <-time.After(5 * time.Second):
					t.Fatalf("B received %v, want %v", got, want)
				}
			}
			if !sameOrderPerUser(got, want) {
				t.Errorf("B received %v, want each user's packets in order: %v", got, want)
			}
			testutil.Eventually(t, 5*time.Second, "the counts", func() bool {
				as, bs := a.node.Stats(), b.node.Stats()
				return as.RelayedOut == uint64(sent) && bs.RelayedIn == uint64(sent) && bs.NATSIn == as.NATSOut
			})
			if as := a.node.Stats(); as.NATSOut != uint64(msgs["c-1"]+msgs["c-2"]) {
				t.Errorf("A counts %d messages out, %v published", as.NATSOut, msgs)
			}
		})
	}
}

// sameOrderPerUser says whether got and want hold the same "user seq"
// entries with each user's in the same order.
func sameOrderPerUser(got, want []string) bool {
	per := func(l []string) map[string][]string {
		m := map[string][]string{}
		for _, e := range l {
			var user string
			var seq int
			if _, err := fmt.Sscanf(e, "%s %d", &user, &seq); err != nil {
				return nil
			}
			m[user] = append(m[user], e)
		}
		return m
	}
	g, w := per(got), per(want)
	if len(g) != len(w) {
		return false
	}
	for u, l := range w {
		if !slices.Equal(g[u], l) {
			return false
		}
	}
	return true
}

// TestRecycleShrinksLargeFrames: a frame whose buffer a large message grew
// goes back to the free frames with a packet's buffer; a packet's frame
// keeps its own.
func TestRecycleShrinksLargeFrames(t *testing.T) {
	s := newSendShard(2)
	small, large := <-s.free, <-s.free
	kept := &small.b[:1][0]
	large.b = append(large.b[:0], make([]byte, 32<<10)...)
	s.recycle(small)
	s.recycle(large)
	for range 2 {
		f := <-s.free
		if cap(f.b) > maxKeptCap {
			t.Errorf("a free frame keeps a buffer of %d bytes", cap(f.b))
		}
		if f == small && &f.b[:1][0] != kept {
			t.Error("a packet's frame lost its buffer")
		}
	}
}
