package main

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// hist is a log-linear latency histogram in microseconds: exact below
// 128 µs, then 64 buckets per power of two (under 1.6 % error), up to
// about 70 minutes. It is not safe for concurrent use; each receiving
// slot owns one and they are merged at the end.
type hist struct {
	counts []uint32
	n      uint64
	sum    uint64 // µs
	max    uint64 // µs
}

const (
	histSubBits = 7
	histHalf    = 1 << (histSubBits - 1)
	histBuckets = (33 - histSubBits + 2) * histHalf
)

func newHist() *hist { return &hist{counts: make([]uint32, histBuckets)} }

func histIndex(us uint64) int {
	e := bits.Len64(us) - histSubBits
	if e < 0 {
		e = 0
	}
	i := e*histHalf + int(us>>uint(e))
	if i >= histBuckets {
		i = histBuckets - 1
	}
	return i
}

// histLow returns the smallest value of bucket i.
func histLow(i int) uint64 {
	if i < 2*histHalf {
		return uint64(i)
	}
	e := i/histHalf - 1
	m := i - e*histHalf
	return uint64(m) << uint(e)
}

// add records one latency.
func (h *hist) add(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.counts[histIndex(us)]++
	h.n++
	h.sum += us
	if us > h.max {
		h.max = us
	}
}

// merge adds o's counts to h.
func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0..1) in microseconds: the middle of the
// bucket that holds it (the exact maximum for q = 1); 0 when empty.
func (h *hist) quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return float64(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			lo := histLow(i)
			hi := histLow(i + 1)
			v := float64(lo) + float64(hi-lo)/2
			if hi-lo <= 1 {
				v = float64(lo)
			}
			return math.Min(v, float64(h.max))
		}
	}
	return float64(h.max)
}

func (h *hist) mean() float64 {
	if h.n == 0 {
		return 0
	}
	return float64(h.sum) / float64(h.n)
}

// durations summarises a small sample of durations (join and connect times)
// exactly.
type durations []time.Duration

func (d durations) quantile(q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}
