// Package e2e holds the router's browser end-to-end tests: they build
// ./cmd/router, run it with -dev on loopback, and drive Debian's headless
// chromium (fake microphone from a WAV made by espeak-ng and sox) through
// the Beep /connect and /join protocol and the -dev demo page.
//
// The tests skip when chromium, espeak-ng or sox is missing. CI installs them
// with: apt-get install -y chromium espeak-ng sox opus-tools
//
// Network: Chromium gathers ICE candidates on every interface it sees. So
// that every packet stays on 127.0.0.1, TestMain builds the router and then
// runs the test binary again in a new network namespace whose only interface
// is loopback (CLONE_NEWNET: root or CAP_SYS_ADMIN, as here and in CI). Where
// that is not allowed the browser tests skip, unless E2E_HOST_NETWORK=1.
//
// Environment:
//
//	E2E_ROUTER_BIN    use this router binary instead of building ./cmd/router
//	E2E_ARTIFACTS     directory for screenshots and logs (default e2e/artifacts)
//	E2E_HOST_NETWORK  1: run on the host's network, without the namespace
package e2e
