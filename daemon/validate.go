package daemon

import (
	"bytes"
	"crypto/rand"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/bundle"
)

// validate is the pipeline's check of a request message before anything
// of it enters the call's record or a policy decision: the message
// decoded, and its ids and ticket are bounded (checkFields). Only then do
// the group, user and ticket join the record.
func (s *Server) validate(c *call, req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if s.codec.malformed(m) {
		c.rec.Detail = append(c.rec.Detail, "malformed")
		return errMalformed(m)
	}
	if err := checkFields(m); err != nil {
		// INVALID_ARGUMENT (errors.go), with the field as a BadRequest.
		return fmt.Errorf("%w: %v", escrow.ErrInvalid, err)
	}
	c.rec.Group, c.rec.User, c.rec.Ticket = requestFields(req)
	return nil
}

func errMalformed(m any) error {
	name := protoreflect.FullName("message")
	if pm, ok := m.(proto.Message); ok {
		name = pm.ProtoReflect().Descriptor().FullName()
	}
	return status.Errorf(codes.InvalidArgument, "the request is not a valid %s: its protobuf encoding is malformed", name)
}

// checkFields checks every string at the top level of a request, and
// every string of a top-level list or map: empty, or 1 to 128 bytes of
// printable ASCII without spaces (bundle.ValidateID). These are what
// become record fields (group, user, ticket, job and request ids),
// policy inputs and rate-limit keys; whether a field is required is its
// handler's business. Nested messages (batch items, recipients) are
// checked by their handlers, item by item, before anything of theirs is
// recorded. Errors name the field and the problem, never the value.
func checkFields(m proto.Message) error {
	var err error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := fd.Name()
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapKey().Kind() == protoreflect.StringKind {
					if e := checkString(k.String()); e != nil {
						err = fmt.Errorf("%s: a key: %v", name, e)
						return false
					}
				}
				if fd.MapValue().Kind() == protoreflect.StringKind {
					if e := checkString(mv.String()); e != nil {
						err = fmt.Errorf("%s: a value: %v", name, e)
						return false
					}
				}
				return true
			})
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := v.List()
			for i := range l.Len() {
				if e := checkString(l.Get(i).String()); e != nil {
					err = fmt.Errorf("%s[%d]: %v", name, i, e)
					break
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			if e := checkString(v.String()); e != nil {
				err = fmt.Errorf("%s: %v", name, e)
			}
		}
		return err == nil
	})
	return err
}

func checkString(s string) error {
	if s == "" {
		return nil
	}
	return bundle.ValidateID(s)
}

// markingCodec is grpc-go's protobuf codec, except for a request that does
// not decode. grpc-go answers such a request INTERNAL before any
// interceptor runs, so it would leave no request id, no record and no log
// line. markingCodec hands it on empty instead, carrying a mark: an
// unknown field whose value is random per process, so that no caller can
// forge it. The validate stage refuses a marked message INVALID_ARGUMENT,
// audited and logged like any other refusal.
type markingCodec struct {
	encoding.CodecV2
	mark []byte
}

func newMarkingCodec() *markingCodec {
	var token [16]byte
	if _, err := rand.Read(token[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	mark := protowire.AppendTag(nil, protowire.MaxValidNumber, protowire.BytesType)
	mark = protowire.AppendBytes(mark, token[:])
	return &markingCodec{CodecV2: encoding.GetCodecV2("proto"), mark: mark}
}

func (c *markingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	proto.Reset(m)
	m.ProtoReflect().SetUnknown(protoreflect.RawFields(c.mark))
	return nil
}

// malformed reports whether m is a request that did not decode.
func (c *markingCodec) malformed(v any) bool {
	m, ok := v.(proto.Message)
	if !ok {
		return false
	}
	u := m.ProtoReflect().GetUnknown()
	return len(u) == len(c.mark) && bytes.Equal(u, c.mark)
}
