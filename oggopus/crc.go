package oggopus

// The Ogg page checksum (RFC 3533 section 6) is CRC-32 with polynomial
// 0x04c11db7, not reflected, initial value 0 and no final XOR. hash/crc32
// implements only the reflected form, so we build the 256-entry table here.
var crcTable = makeCRCTable()

func makeCRCTable() *[256]uint32 {
	var t [256]uint32
	for i := range t {
		r := uint32(i) << 24
		for range 8 {
			if r&0x80000000 != 0 {
				r = r<<1 ^ 0x04c11db7
			} else {
				r <<= 1
			}
		}
		t[i] = r
	}
	return &t
}

// crcUpdate adds p to the running Ogg checksum crc.
func crcUpdate(crc uint32, p []byte) uint32 {
	for _, b := range p {
		crc = crc<<8 ^ crcTable[byte(crc>>24)^b]
	}
	return crc
}
