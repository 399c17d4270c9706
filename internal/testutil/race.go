//go:build race

package testutil

// Race reports whether the race detector is on: code runs several times
// slower, and real-time work (the mixer's Opus encodes) falls behind.
const Race = true
