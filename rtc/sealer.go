package rtc

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pion/srtp/v3"
)

// One AES-GCM sealer per peer (RFC 7714).
//
// Every down-track of a peer encrypts with the same DTLS-SRTP master key
// and salt, and so with the same session key and salt: SRTP's key
// derivation (RFC 3711 section 4.3, key derivation rate 0) does not
// involve the SSRC. A pion Context per down-track derived them again for
// each slot, kept a key schedule per slot (cache misses across a fan-out)
// and looked the SSRC's rollover state up in a map on every packet. A
// gcmSealer derives them once per peer; each down-track gives it its own
// SSRC and its exact packet index (srtpIndex) and a nonce buffer of its
// own. The sealer itself holds nothing that changes after newGCMSealer:
// crypto/cipher's GCM keeps no state between calls. So all of a peer's
// down-tracks share it, on whatever goroutines write to them.
//
// Nonce uniqueness is the down-tracks' affair, as it was with a context
// each: a down-track's SSRC is its own within the session, and it seals
// each extended sequence number once (markSent) or, for a NACK, the very
// same bytes again (DownTrack.resend).
//
// The AEAD profiles have this sealer: AEAD_AES_256_GCM, which pion lists
// first, so what sessions with pion clients negotiate, and
// AEAD_AES_128_GCM. A session on AES_CM_128_HMAC_SHA1_80, which Chromium
// picks, gets the AES-CM sealer (cmsealer.go); any other profile a pion
// Context per down-track.

// gcmSealer seals the RTP packets of one SRTP session with AES-GCM.
type gcmSealer struct {
	aead cipher.AEAD
	salt [gcmNonceLen]byte // the session salt
}

const (
	gcmNonceLen = 12
	gcmTagLen   = 16
	// maxSRTPIndex bounds the packets one master key may protect
	// (RFC 3711 section 9.2: 2^48).
	maxSRTPIndex = 1 << 48
)

// errNoSealer says that a session's keys have no shared sealer: its
// down-tracks each encrypt with a pion Context.
var errNoSealer = errors.New("no shared SRTP sealer")

// newGCMSealer derives the session key and salt of k's SRTP session, which
// must be AEAD_AES_128_GCM or AEAD_AES_256_GCM.
func newGCMSealer(k srtpKeys) (*gcmSealer, error) {
	var keyLen int
	switch k.profile {
	case srtp.ProtectionProfileAeadAes128Gcm:
		keyLen = 16
	case srtp.ProtectionProfileAeadAes256Gcm:
		keyLen = 32
	default:
		return nil, fmt.Errorf("%w for SRTP profile %s (only the AEAD_AES_GCM ones)", errNoSealer, k.profile)
	}
	if len(k.key) != keyLen || len(k.salt) != gcmNonceLen {
		return nil, fmt.Errorf("%w: %s master key of %d bytes and salt of %d, want %d and %d",
			errNoSealer, k.profile, len(k.key), len(k.salt), keyLen, gcmNonceLen)
	}
	master, err := aes.NewCipher(k.key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSealer, err)
	}
	sessionKey := make([]byte, keyLen)
	srtpKDF(master, labelSRTPEncryption, k.salt, sessionKey)
	block, err := aes.NewCipher(sessionKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSealer, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSealer, err)
	}
	g := &gcmSealer{aead: aead}
	srtpKDF(master, labelSRTPSalt, k.salt, g.salt[:])
	return g, nil
}

// SRTP key derivation labels (RFC 3711 section 4.3.1).
const (
	labelSRTPEncryption = 0x00
	labelSRTPSalt       = 0x02
)

// srtpKDF fills out with SRTP's AES-CM key derivation of label, at a key
// derivation rate of 0 (RFC 3711 section 4.3.1, with AES-256 for a 256-bit
// master key as RFC 6188 has it): the blocks AES(master key, x·2^16 + i),
// i = 0, 1, …, where x is the master salt (AES-GCM's 96 bits padded with
// zeros, RFC 7714 section 11) XOR the label at bit 48.
func srtpKDF(master cipher.Block, label byte, salt, out []byte) {
	var in, block [aes.BlockSize]byte
	copy(in[:], salt)
	in[7] ^= label
	for i := 0; i < len(out); i += aes.BlockSize {
		binary.BigEndian.PutUint16(in[14:], uint16(i/aes.BlockSize))
		master.Encrypt(block[:], in[:])
		copy(out[i:], block[:])
	}
}

// srtpIndex returns the SRTP packet index (RFC 3711 section 3.3.1: ROC ·
// 2^16 + SEQ) of the packet a down-track sends under extended sequence
// number seq, when its first packet went out under first. The receiver's
// rollover counter starts at 0 with the first packet it gets, whatever its
// sequence number; extended numbers count every wrap since. So the index
// is seq less first's own wrap count, and a sequence number before first
// has none (ok false): the down-track never sends one (see DownTrack.Write).
// Nor one past the 2^48 packets a master key may protect.
func srtpIndex(seq, first uint64) (index uint64, ok bool) {
	base := first &^ 0xffff
	if seq < first || seq-base >= maxSRTPIndex {
		return 0, false
	}
	return seq - base, true
}

// seal encrypts in place the RTP packet pkt[:n], whose header is
// pkt[:hdrLen], as SRTP packet index of ssrc, and returns the SRTP packet:
// pkt[:n+gcmTagLen], so pkt must have room for the tag. The nonce (RFC 7714
// section 8.1) is built in nonce, the caller's: two goroutines may seal
// with one sealer, each with its own nonce buffer.
func (g *gcmSealer) seal(pkt []byte, hdrLen, n int, ssrc uint32, index uint64, nonce *[gcmNonceLen]byte) []byte {
	g.nonce(nonce, ssrc, index)
	g.aead.Seal(pkt[hdrLen:hdrLen], nonce[:], pkt[hdrLen:n], pkt[:hdrLen])
	return pkt[:n+gcmTagLen]
}

// nonce writes the nonce of packet index of ssrc (RFC 7714 section 8.1):
// 2 zero octets, SSRC, ROC, SEQ (= the 48-bit index), XOR the salt.
func (g *gcmSealer) nonce(nonce *[gcmNonceLen]byte, ssrc uint32, index uint64) {
	nonce[0], nonce[1] = g.salt[0], g.salt[1]
	binary.BigEndian.PutUint32(nonce[2:], ssrc^binary.BigEndian.Uint32(g.salt[2:]))
	binary.BigEndian.PutUint16(nonce[6:], uint16(index>>32)^binary.BigEndian.Uint16(g.salt[6:]))
	binary.BigEndian.PutUint32(nonce[8:], uint32(index)^binary.BigEndian.Uint32(g.salt[8:]))
}

// putHeader writes into b the RTP header of a down-track's packet: version
// 2, no padding, no CSRC, the marker, payload type, sequence number,
// timestamp and SSRC, and, if levelID is not 0, the audio level (RFC 6464)
// as the one header extension (RFC 8285 one-byte form, padded to a word).
// These are the bytes rtp.Header.MarshalTo writes for the header
// DownTrack.header builds; written in place, the send buffer needs no
// rtp.Header to be filled, marshalled and parsed again by the cipher. It
// returns the header's length; b has room for maxHeader bytes.
func putHeader(b []byte, pt uint8, marker bool, seq uint16, ts, ssrc uint32, levelID uint8, level byte) int {
	_ = b[maxHeader-1]
	b[0] = 0x80
	b[1] = pt & 0x7f
	if marker {
		b[1] |= 0x80
	}
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	if levelID == 0 {
		return 12
	}
	b[0] |= 0x10 // X
	b[12], b[13] = 0xbe, 0xde
	b[14], b[15] = 0, 1  // one 32-bit word follows
	b[16] = levelID << 4 // the length, 1, is written as 0
	b[17] = level
	b[18], b[19] = 0, 0 // padding
	return maxHeader
}

// maxHeader is the longest header putHeader writes.
const maxHeader = 20

// open authenticates and decrypts pkt, an SRTP packet whose RTP header is
// pkt[:hdrLen], as packet index of ssrc: with the remote keys of a
// session, a gcmSealer opens what the peer sealed (see ingress.go). The
// RTP packet is written to dst, which must have room for len(pkt) bytes,
// and returned; pkt is left as it was, so that a packet that does not
// authenticate can still go to pion. nonce is the caller's.
func (g *gcmSealer) open(dst, pkt []byte, hdrLen int, ssrc uint32, index uint64, nonce *[gcmNonceLen]byte) ([]byte, bool) {
	if len(pkt) < hdrLen+gcmTagLen || len(dst) < len(pkt) {
		return nil, false
	}
	g.nonce(nonce, ssrc, index)
	copy(dst, pkt[:hdrLen])
	out, err := g.aead.Open(dst[hdrLen:hdrLen], nonce[:], pkt[hdrLen:], pkt[:hdrLen])
	if err != nil {
		return nil, false
	}
	return dst[:hdrLen+len(out)], true
}
