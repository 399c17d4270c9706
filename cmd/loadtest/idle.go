package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// idleConfig is a memory-per-device run: devices that connect, join and
// then only keep their connection alive (ICE consent, RTCP), with nobody
// speaking.
type idleConfig struct {
	URL           string
	Devices       int // measured devices
	Warmup        int // devices connected before the baseline
	Slots         int // receiving slots of each device
	Conversations int
	Rate          float64
	Settle        time.Duration
	Hold          time.Duration // CPU window once every device is connected
	RouterPID     int
	DebugURL      string // harness: /stats and heap profiles
	HeapProfile   string // harness: write heap profiles here (and .before), goroutines to .goroutines
	DialTimeout   time.Duration
	NACK          bool
	Logf          func(string, ...any)
}

type idleResult struct {
	Started         time.Time `json:"started"`
	LoadAvg         string    `json:"loadavg_at_start"`
	Devices         int       `json:"devices"`
	Connected       int       `json:"connected"`
	Failed          int       `json:"failed"`
	FirstError      string    `json:"first_error,omitempty"`
	Warmup          int       `json:"warmup"`
	Slots           int       `json:"slots"`
	Conversations   int       `json:"conversations"`
	RSSBeforeKiB    int64     `json:"rss_before_kib"`
	RSSAfterKiB     int64     `json:"rss_after_kib"`
	RSSPerDeviceKiB float64   `json:"rss_per_device_kib"`
	ThreadsBefore   int       `json:"threads_before"`
	ThreadsAfter    int       `json:"threads_after"`
	// CPU of the router over Hold with every device connected and idle
	// (ICE consent, RTCP reports, pion's timers), per connected device,
	// warm-up devices included.
	HoldSeconds      float64 `json:"hold_s"`
	CPUCores         float64 `json:"router_cpu_cores"`
	CPUPerDeviceUsPS float64 `json:"router_cpu_us_per_device_per_s"`
	// Only with the harness router (-router-self), after a forced GC.
	Harness *struct {
		Before           harnessStats `json:"before"`
		After            harnessStats `json:"after"`
		GoroutinesPerDev float64      `json:"goroutines_per_device"`
		HeapPerDevKiB    float64      `json:"heap_inuse_per_device_kib"`
		StackPerDevKiB   float64      `json:"stack_per_device_kib"`
	} `json:"harness,omitempty"`
	HeapProfile string    `json:"heap_profile,omitempty"`
	ConnectMS   quantiles `json:"connect_ms"`
	JoinMS      quantiles `json:"join_ms"`
}

func harnessStatsOf(ctx context.Context, debugURL, query string) (harnessStats, error) {
	var st harnessStats
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, debugURL+"/stats?"+query, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// runIdle connects Warmup devices, takes the baseline, connects Devices
// more, and reports the difference per device.
func runIdle(ctx context.Context, cfg idleConfig) (*idleResult, error) {
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if cfg.RouterPID <= 0 {
		return nil, errNoRouterPID
	}
	res := &idleResult{Started: time.Now(), LoadAvg: loadAvg(), Devices: cfg.Devices, Warmup: cfg.Warmup, Slots: cfg.Slots, Conversations: cfg.Conversations}
	win := &window{}
	win.start.Store(math.MaxInt64)
	win.end.Store(math.MaxInt64)
	lc := loadConfig{URL: cfg.URL, Rate: cfg.Rate, DialTimeout: cfg.DialTimeout, NACK: cfg.NACK,
		Scenario: Scenario{Subscribers: cfg.Warmup + cfg.Devices, Slots: cfg.Slots, Conversations: cfg.Conversations}}
	k, err := newConnector(&lc, win)
	if err != nil {
		return nil, err
	}
	defer k.close()
	devs := makeDevices(&lc, "idle"+strconv.FormatInt(time.Now().UnixNano()%1e9, 36))
	defer closeAll(devs)

	logf("idle: %d warm-up devices", cfg.Warmup)
	k.ramp(ctx, devs[:cfg.Warmup], nil)
	if !sleepUntil(ctx, time.Now().Add(cfg.Settle)) {
		return nil, ctx.Err()
	}
	before, err := readProc(cfg.RouterPID)
	if err != nil {
		return nil, err
	}
	var hb harnessStats
	if cfg.DebugURL != "" {
		if hb, err = harnessStatsOf(ctx, cfg.DebugURL, "gc=1"); err != nil {
			return nil, err
		}
		if cfg.HeapProfile != "" {
			if err := fetchTo(ctx, cfg.DebugURL+"/debug/pprof/heap", cfg.HeapProfile+".before", 30*time.Second); err != nil {
				return nil, err
			}
		}
	}

	logf("idle: %d devices at %.0f/s", cfg.Devices, cfg.Rate)
	k.ramp(ctx, devs[cfg.Warmup:], nil)
	var joins, connects durations
	for _, d := range devs {
		if d.c == nil {
			res.Failed++
			if res.FirstError == "" && d.err != nil {
				res.FirstError = d.err.Error()
			}
		}
	}
	for _, d := range devs[cfg.Warmup:] {
		if d.c != nil {
			res.Connected++
			joins = append(joins, d.joinDur)
			connects = append(connects, d.connectDur)
		}
	}
	res.JoinMS, res.ConnectMS = durQuantiles(joins), durQuantiles(connects)
	if res.Connected == 0 {
		return res, fmt.Errorf("no device connected: %v", devs[cfg.Warmup].err)
	}
	if !sleepUntil(ctx, time.Now().Add(cfg.Settle)) {
		return nil, ctx.Err()
	}
	after, err := readProc(cfg.RouterPID)
	if err != nil {
		return nil, err
	}
	n := float64(res.Connected)
	res.RSSBeforeKiB, res.RSSAfterKiB = before.RSSKiB, after.RSSKiB
	res.RSSPerDeviceKiB = float64(after.RSSKiB-before.RSSKiB) / n
	res.ThreadsBefore, res.ThreadsAfter = before.Threads, after.Threads
	if cfg.Hold > 0 {
		if !sleepUntil(ctx, after.At.Add(cfg.Hold)) {
			return nil, ctx.Err()
		}
		end, err := readProc(cfg.RouterPID)
		if err != nil {
			return nil, err
		}
		d := end.At.Sub(after.At).Seconds()
		res.HoldSeconds = d
		res.CPUCores = (end.CPU - after.CPU).Seconds() / d
		res.CPUPerDeviceUsPS = res.CPUCores * 1e6 / float64(len(devs)-res.Failed) // warm-up included
	}
	if cfg.DebugURL != "" {
		ha, err := harnessStatsOf(ctx, cfg.DebugURL, "gc=1")
		if err != nil {
			return nil, err
		}
		res.Harness = &struct {
			Before           harnessStats `json:"before"`
			After            harnessStats `json:"after"`
			GoroutinesPerDev float64      `json:"goroutines_per_device"`
			HeapPerDevKiB    float64      `json:"heap_inuse_per_device_kib"`
			StackPerDevKiB   float64      `json:"stack_per_device_kib"`
		}{
			Before: hb, After: ha,
			GoroutinesPerDev: float64(ha.Goroutines-hb.Goroutines) / n,
			HeapPerDevKiB:    (float64(ha.HeapInuse) - float64(hb.HeapInuse)) / 1024 / n,
			StackPerDevKiB:   (float64(ha.StackInuse) - float64(hb.StackInuse)) / 1024 / n,
		}
		if cfg.HeapProfile != "" {
			if err := fetchTo(ctx, cfg.DebugURL+"/debug/pprof/heap", cfg.HeapProfile, 30*time.Second); err != nil {
				return nil, err
			}
			// The goroutines too, as text (who started how many): an
			// idle device's cost is its stacks as well as its heap.
			if err := fetchTo(ctx, cfg.DebugURL+"/debug/pprof/goroutine?debug=1", cfg.HeapProfile+".goroutines", 30*time.Second); err != nil {
				return nil, err
			}
			res.HeapProfile = cfg.HeapProfile
		}
	}
	return res, nil
}
