package rtc

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash"

	"github.com/pion/srtp/v3"
)

// One AES-CM sealer per peer (RFC 3711), for the sessions that negotiate
// AES_CM_128_HMAC_SHA1_80: Chromium's, so every browser's.
//
// As with AES-GCM (sealer.go), every down-track of a peer has the same
// session keys; what a pion Context per down-track repeated was the key
// derivation, an AES key schedule and an HMAC key per down-track, the
// header marshalled and parsed again, and a map lookup of the SSRC's
// rollover state per packet. A cmSealer holds the peer's session key
// schedule (cipher.Block is safe for concurrent use: AES keeps no state
// between blocks), the session salt and the authentication key. What
// changes per packet lives in each down-track's cmState: the counter
// block, the key stream block and an HMAC-SHA1 of its own (a hash is not
// safe for concurrent use), all under the down-track's lock.
//
// The counter mode is written here, not taken from crypto/cipher: its
// NewCTR makes a stream per packet (an allocation on the packet path), and
// SRTP's packets are a few blocks long, where the generic stream has no
// advantage.

// cmSealer seals the RTP packets of one SRTP session with
// AES_CM_128_HMAC_SHA1_80.
type cmSealer struct {
	block   cipher.Block // AES-128 with the session key
	salt    [14]byte     // the session salt
	authKey [20]byte     // the session authentication key (HMAC-SHA1)
}

const (
	cmSaltLen = 14
	cmKeyLen  = 16
	cmAuthLen = 20
	cmTagLen  = 10 // HMAC-SHA1 truncated to 80 bits
)

// labelSRTPAuth is the key derivation label of the authentication key
// (RFC 3711 section 4.3.1).
const labelSRTPAuth = 0x01

// newCMSealer derives the session keys of k's SRTP session, which must be
// AES_CM_128_HMAC_SHA1_80.
func newCMSealer(k srtpKeys) (*cmSealer, error) {
	if k.profile != srtp.ProtectionProfileAes128CmHmacSha1_80 {
		return nil, fmt.Errorf("%w for SRTP profile %s (an AES-CM sealer is AES_CM_128_HMAC_SHA1_80 only)", errNoSealer, k.profile)
	}
	if len(k.key) != cmKeyLen || len(k.salt) != cmSaltLen {
		return nil, fmt.Errorf("%w: %s master key of %d bytes and salt of %d, want %d and %d",
			errNoSealer, k.profile, len(k.key), len(k.salt), cmKeyLen, cmSaltLen)
	}
	master, err := aes.NewCipher(k.key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSealer, err)
	}
	var sessionKey [cmKeyLen]byte
	srtpKDF(master, labelSRTPEncryption, k.salt, sessionKey[:])
	c := &cmSealer{}
	if c.block, err = aes.NewCipher(sessionKey[:]); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSealer, err)
	}
	srtpKDF(master, labelSRTPSalt, k.salt, c.salt[:])
	srtpKDF(master, labelSRTPAuth, k.salt, c.authKey[:])
	return c, nil
}

// cmState is one down-track's scratch for a cmSealer.
type cmState struct {
	mac     hash.Hash // HMAC-SHA1 with the session's authentication key
	iv, ks  [aes.BlockSize]byte
	tag     [sha1.Size]byte
	rocWord [4]byte
}

// newState returns a down-track's state for c.
func (c *cmSealer) newState() *cmState {
	return &cmState{mac: hmac.New(sha1.New, c.authKey[:])}
}

// seal encrypts in place the RTP packet pkt[:n], whose header is
// pkt[:hdrLen], as SRTP packet index of ssrc, and appends the
// authentication tag: it returns pkt[:n+cmTagLen], so pkt must have room
// for the tag. st is the calling down-track's own state.
func (c *cmSealer) seal(pkt []byte, hdrLen, n int, ssrc uint32, index uint64, st *cmState) []byte {
	c.keystream(pkt[hdrLen:n], ssrc, index, st)
	// Tag = HMAC-SHA1(k_a, header || encrypted payload || ROC), 80 bits
	// (RFC 3711 section 4.2).
	binary.BigEndian.PutUint32(st.rocWord[:], uint32(index>>16))
	st.mac.Reset()
	st.mac.Write(pkt[:n])
	st.mac.Write(st.rocWord[:])
	tag := st.mac.Sum(st.tag[:0])
	copy(pkt[n:], tag[:cmTagLen])
	return pkt[:n+cmTagLen]
}

// keystream XORs payload, of packet index of ssrc, with the AES-CM key
// stream: it encrypts and decrypts.
func (c *cmSealer) keystream(payload []byte, ssrc uint32, index uint64, st *cmState) {
	// IV = (k_s · 2^16) XOR (SSRC · 2^64) XOR (i · 2^16), block counter in
	// the last two octets (RFC 3711 section 4.1.1).
	iv := &st.iv
	copy(iv[:], c.salt[:])
	iv[14], iv[15] = 0, 0
	binary.BigEndian.PutUint32(iv[4:], binary.BigEndian.Uint32(iv[4:])^ssrc)
	binary.BigEndian.PutUint16(iv[8:], binary.BigEndian.Uint16(iv[8:])^uint16(index>>32))
	binary.BigEndian.PutUint32(iv[10:], binary.BigEndian.Uint32(iv[10:])^uint32(index))
	for ctr := uint16(0); len(payload) > 0; ctr++ {
		binary.BigEndian.PutUint16(iv[14:], ctr)
		c.block.Encrypt(st.ks[:], iv[:])
		m := min(len(payload), aes.BlockSize)
		subtle.XORBytes(payload[:m], payload[:m], st.ks[:m])
		payload = payload[m:]
	}
}

// open authenticates pkt, an SRTP packet whose RTP header is pkt[:hdrLen],
// as packet index of ssrc and, if it does, decrypts it in place and
// returns the RTP packet, pkt without its tag: with the remote keys of a
// session, a cmSealer opens what the peer sealed (see ingress.go). A
// packet that does not authenticate is left as it was. st is the caller's.
func (c *cmSealer) open(pkt []byte, hdrLen int, ssrc uint32, index uint64, st *cmState) ([]byte, bool) {
	n := len(pkt) - cmTagLen
	if n < hdrLen {
		return nil, false
	}
	binary.BigEndian.PutUint32(st.rocWord[:], uint32(index>>16))
	st.mac.Reset()
	st.mac.Write(pkt[:n])
	st.mac.Write(st.rocWord[:])
	tag := st.mac.Sum(st.tag[:0])
	if subtle.ConstantTimeCompare(tag[:cmTagLen], pkt[n:]) != 1 {
		return nil, false
	}
	c.keystream(pkt[hdrLen:n], ssrc, index, st)
	return pkt[:n], true
}
