package cluster

import "github.com/prometheus/client_golang/prometheus"

// Stats is a snapshot of a Node's counts.
type Stats struct {
	// RelayedOut and RelayedIn count relay frames of packets published and
	// received.
	RelayedOut, RelayedIn uint64
	// NATSOut and NATSIn count the NATS messages relay frames travelled
	// in (one frame, or a batch of frames of one conversation);
	// RelayedOut/NATSOut is about the frames per message.
	NATSOut, NATSIn uint64
	// DropQueue counts frames dropped because a sender's queue was full;
	// DropNoTrack, packets of a remote track this router could not make;
	// Malformed, frames not understood; SendErrors, publishes NATS refused;
	// Duplicates, packets whose sequence number their remote track had
	// forwarded already (rtc.UpTrack.Cache).
	DropQueue, DropNoTrack, Malformed, SendErrors, Duplicates uint64
	// StoreErrors counts memberships not written to the bucket.
	StoreErrors uint64
	// KeyframesOut counts keyframe requests of remote video tracks' subscribers
	// sent to their publishers' routers; KeyframesIn, those of other routers
	// passed on to a local publisher; KeyframesNoTrack, those for a track
	// no longer relayed from here.
	KeyframesOut, KeyframesIn, KeyframesNoTrack uint64
	// MessagesOut counts the participants' messages (a front-end's chat,
	// say: room.Participant.Broadcast) relayed to other routers;
	// MessagesIn, those of other routers' participants handed to this
	// router's.
	MessagesOut, MessagesIn uint64
	// SubjectsIn are the relay subjects this router subscribes to (the
	// conversations it listens in); SubjectsOut, the conversations it
	// relays out (another router listens in them).
	SubjectsIn, SubjectsOut int
	// Routers are the other routers heard from.
	Routers int
	// RemoteTracks are the remote tracks fed here now.
	RemoteTracks int64
	// Memberships is the size of the membership cache.
	Memberships int
	// WatchLag is how many revisions the membership watch was behind the
	// bucket at its last check; WatchRestarts counts the watches started
	// again (after a reconnect, or a lag that lasted a check).
	WatchLag      uint64
	WatchRestarts uint64
}

// Stats returns the Node's counts.
func (n *Node) Stats() Stats {
	s := Stats{
		RelayedOut:       n.count.out.Load(),
		RelayedIn:        n.count.in.Load(),
		NATSOut:          n.count.natsOut.Load(),
		NATSIn:           n.count.natsIn.Load(),
		DropQueue:        n.count.dropQueue.Load(),
		DropNoTrack:      n.count.dropNoTrack.Load(),
		Malformed:        n.count.malformed.Load(),
		SendErrors:       n.count.sendErrors.Load(),
		Duplicates:       n.count.duplicates.Load(),
		StoreErrors:      n.count.storeErrors.Load(),
		KeyframesOut:     n.count.keyframesOut.Load(),
		KeyframesIn:      n.count.keyframesIn.Load(),
		KeyframesNoTrack: n.count.keyframesNoTrack.Load(),
		MessagesOut:      n.count.messagesOut.Load(),
		MessagesIn:       n.count.messagesIn.Load(),
		RemoteTracks:     n.count.remoteTracks.Load(),
		Memberships:      n.mem.cacheSize(),
		WatchLag:         n.mem.lag(),
		WatchRestarts:    n.mem.restarts.Load(),
	}
	n.mu.Lock()
	s.SubjectsIn = len(n.subs)
	n.mu.Unlock()
	s.SubjectsOut, s.Routers = n.interest.relayed()
	return s
}

// Metrics registers the Node's metrics on reg (call it before Start): the
// relay's packets, drops, subjects and remote tracks, the membership
// cache's size and the relayed hop's latency.
func (n *Node) Metrics(reg prometheus.Registerer) error {
	hop := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "router_relay_hop_seconds",
		Help: "Time from a relayed packet's arrival at its publisher's router to its arrival at this one (router clocks must agree).",
		// 50 µs to 1 s, 23 % apart.
		Buckets: prometheus.ExponentialBucketsRange(50e-6, 1, 48),
	})
	if err := reg.Register(hop); err != nil {
		return err
	}
	n.hop = hop
	return reg.Register(collector{n})
}

// collector exports Stats.
type collector struct{ n *Node }

var (
	descPackets  = prometheus.NewDesc("router_relay_packets_total", "Relayed packets, by direction (out: published for other routers, in: received from them).", []string{"direction"}, nil)
	descNATS     = prometheus.NewDesc("router_relay_nats_messages_total", "NATS messages relay frames travelled in (one frame, or a batch of a conversation's frames queued together), by direction (out: published, in: received from other routers).", []string{"direction"}, nil)
	descDrops    = prometheus.NewDesc("router_relay_dropped_total", "Relay frames dropped, by reason.", []string{"reason"}, nil)
	descSubj     = prometheus.NewDesc("router_relay_subjects", "Conversations relayed, by direction (in: subscribed here, out: published for another router).", []string{"direction"}, nil)
	descRemote   = prometheus.NewDesc("router_relay_remote_tracks", "Remote tracks (publishers of other routers) fed here now.", nil, nil)
	descRouters  = prometheus.NewDesc("router_cluster_routers", "Other routers of the cluster heard from.", nil, nil)
	descMembers  = prometheus.NewDesc("router_membership_cache", "Memberships in the local cache of the shared membership bucket.", nil, nil)
	descStore    = prometheus.NewDesc("router_membership_store_errors_total", "Memberships not written to the shared bucket.", nil, nil)
	descLag      = prometheus.NewDesc("router_membership_watch_lag", "Revisions the watch of the shared membership bucket was behind the bucket at its last check (every 2 s).", nil, nil)
	descMessages = prometheus.NewDesc("router_relay_messages_total", "Participants' messages (a front-end's chat, say) relayed between routers, by direction (out, in).", []string{"direction"}, nil)
	descKeys     = prometheus.NewDesc("router_relay_keyframe_requests_total", "Keyframe requests for relayed video tracks, by direction (out: sent to a publisher's router for subscribers here, in: passed on to a publisher here, no_track: for a track no longer relayed from here).", []string{"direction"}, nil)
	descRestart  = prometheus.NewDesc("router_membership_watch_restarts_total", "Watches of the shared membership bucket started again (after a NATS reconnect, or a lag that lasted a check).", nil, nil)
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descNATS, descDrops, descSubj, descRemote, descRouters, descMembers, descStore, descLag, descRestart, descKeys, descMessages} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.n.Stats()
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(s.RelayedOut), "out")
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(s.RelayedIn), "in")
	ch <- prometheus.MustNewConstMetric(descNATS, prometheus.CounterValue, float64(s.NATSOut), "out")
	ch <- prometheus.MustNewConstMetric(descNATS, prometheus.CounterValue, float64(s.NATSIn), "in")
	ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.DropQueue), "queue_full")
	ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.DropNoTrack), "no_track")
	ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.Malformed), "malformed")
	ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.SendErrors), "send_error")
	ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(s.Duplicates), "duplicate")
	ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(s.MessagesOut), "out")
	ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(s.MessagesIn), "in")
	ch <- prometheus.MustNewConstMetric(descKeys, prometheus.CounterValue, float64(s.KeyframesOut), "out")
	ch <- prometheus.MustNewConstMetric(descKeys, prometheus.CounterValue, float64(s.KeyframesIn), "in")
	ch <- prometheus.MustNewConstMetric(descKeys, prometheus.CounterValue, float64(s.KeyframesNoTrack), "no_track")
	ch <- prometheus.MustNewConstMetric(descSubj, prometheus.GaugeValue, float64(s.SubjectsIn), "in")
	ch <- prometheus.MustNewConstMetric(descSubj, prometheus.GaugeValue, float64(s.SubjectsOut), "out")
	ch <- prometheus.MustNewConstMetric(descRemote, prometheus.GaugeValue, float64(s.RemoteTracks))
	ch <- prometheus.MustNewConstMetric(descRouters, prometheus.GaugeValue, float64(s.Routers))
	ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(s.Memberships))
	ch <- prometheus.MustNewConstMetric(descStore, prometheus.CounterValue, float64(s.StoreErrors))
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(s.WatchLag))
	ch <- prometheus.MustNewConstMetric(descRestart, prometheus.CounterValue, float64(s.WatchRestarts))
}
