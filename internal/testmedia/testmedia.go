// Package testmedia provides video test fixtures made by real encoders, and
// decodes received media back, so that tests of the media path can check
// that what arrives is what a decoder accepts.
//
// The fixtures are 3 seconds of ffmpeg's testsrc pattern, 320x240 at 30
// frames per second with a keyframe every 30 frames, encoded at test time
// by the ffmpeg command line tool (Debian package ffmpeg: libvpx, libx264
// and libaom). Nothing touches the network.
//
// Each fixture is encoded once per test process, on first use, into a
// directory under the OS temp dir that Cleanup removes. A test binary that
// uses fixtures should call Cleanup once its tests are done:
//
//	func TestMain(m *testing.M) {
//		defer testmedia.Cleanup()
//		m.Run()
//	}
//
// Without ffmpeg, fixtures skip the test, unless the environment variable
// CI is set: then they fail it, so that CI never silently skips.
package testmedia

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Frame rate, size, length and keyframe interval of every fixture.
const (
	rate     = 30
	source   = "testsrc=size=320x240:rate=30"
	seconds  = "3"
	keyEvery = "30"
)

// fixture is one encoded file, made once per process.
type fixture struct {
	file    string   // file name in the fixture directory
	encoder string   // ffmpeg encoder the args use
	args    []string // ffmpeg output options: codec and container

	once sync.Once
	path string
	err  error
}

var (
	vp8File = &fixture{file: "vp8.ivf", encoder: "libvpx", args: []string{
		"-c:v", "libvpx", "-g", keyEvery, "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8",
		"-f", "ivf",
	}}
	h264File = &fixture{file: "h264.h264", encoder: "libx264", args: []string{
		"-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-tune", "zerolatency",
		"-g", keyEvery, "-bf", "0", "-x264-params", "repeat-headers=1",
		"-f", "h264",
	}}
	vp9File = &fixture{file: "vp9.ivf", encoder: "libvpx-vp9", args: []string{
		"-c:v", "libvpx-vp9", "-g", keyEvery, "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8",
		"-lag-in-frames", "0",
		"-f", "ivf",
	}}
	av1File = &fixture{file: "av1.ivf", encoder: "libaom-av1", args: []string{
		"-c:v", "libaom-av1", "-g", keyEvery, "-b:v", "300k", "-usage", "realtime", "-cpu-used", "8",
		"-lag-in-frames", "0",
		"-f", "ivf",
	}}
)

// VP8 returns the path of the VP8 fixture, an IVF file encoded by libvpx
// in realtime mode.
func VP8(tb testing.TB) string {
	tb.Helper()
	return vp8File.get(tb)
}

// H264 returns the path of the H.264 fixture, an Annex-B byte stream
// encoded by libx264: constrained baseline, no B-frames, zero latency
// tuning (so a picture may be coded as several slices), and SPS and PPS
// repeated before every IDR picture.
func H264(tb testing.TB) string {
	tb.Helper()
	return h264File.get(tb)
}

// VP9 returns the path of the VP9 fixture, an IVF file encoded by
// libvpx-vp9 in realtime mode without lookahead (no hidden frames).
func VP9(tb testing.TB) string {
	tb.Helper()
	return vp9File.get(tb)
}

// AV1 returns the path of the AV1 fixture, an IVF file encoded by libaom
// in realtime mode without lookahead.
func AV1(tb testing.TB) string {
	tb.Helper()
	return av1File.get(tb)
}

// get returns the path of f, encoding it on first use.
func (f *fixture) get(tb testing.TB) string {
	tb.Helper()
	requireEncoder(tb, f.encoder)
	f.once.Do(func() { f.path, f.err = f.encode() })
	if f.err != nil {
		tb.Fatalf("testmedia: %v", f.err)
	}
	return f.path
}

// encode runs ffmpeg to make f in the fixture directory.
func (f *fixture) encode() (string, error) {
	d, err := fixtureDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(d, f.file)
	args := []string{"-nostdin", "-hide_banner", "-v", "error", "-f", "lavfi", "-i", source, "-t", seconds}
	args = append(args, f.args...)
	args = append(args, "-y", path)
	if out, err := exec.Command("ffmpeg", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("encode %s: ffmpeg %s: %w\n%s", f.file, strings.Join(args, " "), err, out)
	}
	return path, nil
}

var dir struct {
	sync.Mutex
	path string
}

// fixtureDir returns the fixture directory, creating it on first use.
func fixtureDir() (string, error) {
	dir.Lock()
	defer dir.Unlock()
	if dir.path == "" {
		d, err := os.MkdirTemp("", "testmedia-")
		if err != nil {
			return "", fmt.Errorf("fixture directory: %w", err)
		}
		dir.path = d
	}
	return dir.path, nil
}

// Cleanup removes the fixture directory and everything in it. Call it
// once all tests of the process are done (see the package
// documentation): the paths fixtures returned no longer exist afterwards,
// and the fixtures are not made again.
func Cleanup() {
	dir.Lock()
	defer dir.Unlock()
	if dir.path != "" {
		os.RemoveAll(dir.path)
	}
}

var encoders struct {
	once sync.Once
	list []byte // output of ffmpeg -encoders
	err  error
}

// requireEncoder skips or fails tb, as the package documentation says,
// unless ffmpeg is installed and has encoder name.
func requireEncoder(tb testing.TB, name string) {
	tb.Helper()
	requireFFmpeg(tb)
	encoders.once.Do(func() {
		encoders.list, encoders.err = exec.Command("ffmpeg", "-hide_banner", "-encoders").Output()
	})
	if encoders.err != nil {
		tb.Fatalf("testmedia: ffmpeg -encoders: %v", encoders.err)
	}
	for l := range bytes.Lines(encoders.list) {
		if f := bytes.Fields(l); len(f) >= 2 && string(f[1]) == name {
			return
		}
	}
	missing(tb, fmt.Sprintf("ffmpeg has no %s encoder", name))
}

// requireFFmpeg skips or fails tb, as the package documentation says,
// unless ffmpeg is installed.
func requireFFmpeg(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		missing(tb, "ffmpeg is not installed (Debian: apt-get install ffmpeg)")
	}
}

// missing skips tb for the reason why, or fails it under CI.
func missing(tb testing.TB, why string) {
	tb.Helper()
	if ci := os.Getenv("CI"); ci != "" {
		tb.Fatalf("testmedia: %s, and CI=%s forbids skipping", why, ci)
	}
	tb.Skipf("testmedia: %s; skipping (with CI set, this fails)", why)
}
