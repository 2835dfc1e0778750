package hsm

import "github.com/miekg/pkcs11"

// p11 is the module as one operation sees it: every PKCS#11 call made on
// the operation's session goes through it and is counted, so that the
// Observer learns how many calls (on a network HSM, round trips) each
// operation costs. Only the calls an operation makes are here; opening,
// closing and logging sessions in is the pool's business and not counted.
type p11 struct {
	ctx *pkcs11.Ctx
	n   *int // calls so far; a session serves one goroutine at a time
}

func (p p11) WrapKey(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error) {
	*p.n++
	return p.ctx.WrapKey(s, m, wrapping, key)
}

func (p p11) UnwrapKey(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	*p.n++
	return p.ctx.UnwrapKey(s, m, unwrapping, wrapped, t)
}

func (p p11) DeriveKey(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	*p.n++
	return p.ctx.DeriveKey(s, m, base, t)
}

func (p p11) DestroyObject(s pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	*p.n++
	return p.ctx.DestroyObject(s, o)
}

func (p p11) CreateObject(s pkcs11.SessionHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	*p.n++
	return p.ctx.CreateObject(s, t)
}

func (p p11) GenerateKey(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	*p.n++
	return p.ctx.GenerateKey(s, m, t)
}

func (p p11) GenerateKeyPair(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	*p.n++
	return p.ctx.GenerateKeyPair(s, m, pub, priv)
}

func (p p11) GenerateRandom(s pkcs11.SessionHandle, n int) ([]byte, error) {
	*p.n++
	return p.ctx.GenerateRandom(s, n)
}

func (p p11) GetAttributeValue(s pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	*p.n++
	return p.ctx.GetAttributeValue(s, o, a)
}

func (p p11) GetSessionInfo(s pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	*p.n++
	return p.ctx.GetSessionInfo(s)
}

func (p p11) EncryptInit(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, k pkcs11.ObjectHandle) error {
	*p.n++
	return p.ctx.EncryptInit(s, m, k)
}

func (p p11) Encrypt(s pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	*p.n++
	return p.ctx.Encrypt(s, msg)
}

func (p p11) DecryptInit(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, k pkcs11.ObjectHandle) error {
	*p.n++
	return p.ctx.DecryptInit(s, m, k)
}

func (p p11) Decrypt(s pkcs11.SessionHandle, c []byte) ([]byte, error) {
	*p.n++
	return p.ctx.Decrypt(s, c)
}

func (p p11) SignInit(s pkcs11.SessionHandle, m []*pkcs11.Mechanism, k pkcs11.ObjectHandle) error {
	*p.n++
	return p.ctx.SignInit(s, m, k)
}

func (p p11) Sign(s pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	*p.n++
	return p.ctx.Sign(s, msg)
}

func (p p11) DigestInit(s pkcs11.SessionHandle, m []*pkcs11.Mechanism) error {
	*p.n++
	return p.ctx.DigestInit(s, m)
}

func (p p11) DigestUpdate(s pkcs11.SessionHandle, msg []byte) error {
	*p.n++
	return p.ctx.DigestUpdate(s, msg)
}

func (p p11) DigestKey(s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error {
	*p.n++
	return p.ctx.DigestKey(s, k)
}

func (p p11) DigestFinal(s pkcs11.SessionHandle) ([]byte, error) {
	*p.n++
	return p.ctx.DigestFinal(s)
}
