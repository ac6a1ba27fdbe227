// noop-extproc: the floor any Endpoint Picker can reach behind Envoy. A Go
// ext_proc v3 server (go-control-plane) that speaks exactly what kv-epp speaks
// in FULL_DUPLEX_STREAMED mode (src/server/ext-proc/stream.ts), minus the
// routing work:
//
//   - request headers: kept, not answered (header-only requests are answered at
//     once with the destination);
//   - request body: buffered to end_of_stream (or the request trailers);
//   - then the request-headers response: x-gateway-destination-endpoint (a fixed
//     upstream) + content-length, clear_route_cache, dynamic metadata
//     envoy.lb/x-gateway-destination-endpoint; then the body echoed back as
//     streamed_response chunks of at most 62 000 bytes, end_of_stream on the
//     last (or a request-trailers response after the body when trailers ended it);
//   - response headers, body and trailers passed through (each body chunk echoed
//     as a streamed_response, end_of_stream as received).
//
// It also serves grpc.health.v1 (services "" and
// envoy.service.ext_proc.v3.ExternalProcessor) on the same port, which Envoy's
// EPP cluster health check asks. Prints "listening HOST:PORT" on stdout.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	destinationKey = "x-gateway-destination-endpoint"
	lbNamespace    = "envoy.lb"
	chunkBytes     = 62_000
)

type server struct {
	extprocv3.UnimplementedExternalProcessorServer
	destination string
}

func setHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func (s *server) destinationMetadata() *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		lbNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			destinationKey: structpb.NewStringValue(s.destination),
		}}),
	}}
}

// routed is the request-headers answer kv-epp sends once the body is complete.
func (s *server) routed(bodyLen int, withLength bool) *extprocv3.ProcessingResponse {
	set := []*corev3.HeaderValueOption{setHeader(destinationKey, s.destination)}
	if withLength {
		set = append(set, setHeader("content-length", strconv.Itoa(bodyLen)))
	}
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
				HeaderMutation:  &extprocv3.HeaderMutation{SetHeaders: set},
				ClearRouteCache: true,
			}},
		},
		DynamicMetadata: s.destinationMetadata(),
	}
}

func streamed(request bool, body []byte, eos bool) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
		BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{
			StreamedResponse: &extprocv3.StreamedBodyResponse{Body: body, EndOfStream: eos},
		}},
	}}
	if request {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
}

// sendStreamed sends body as ≤62 000-byte streamed_response pieces (one empty
// piece for an empty body), end_of_stream (if eos) on the last.
func sendStreamed(st extprocv3.ExternalProcessor_ProcessServer, request bool, body []byte, eos bool) error {
	if len(body) <= chunkBytes {
		return st.Send(streamed(request, body, eos))
	}
	for off := 0; off < len(body); off += chunkBytes {
		end := min(off+chunkBytes, len(body))
		if err := st.Send(streamed(request, body[off:end], eos && end == len(body))); err != nil {
			return err
		}
	}
	return nil
}

func (s *server) Process(st extprocv3.ExternalProcessor_ProcessServer) error {
	const (
		phaseHeaders = iota
		phaseBody
		phaseRouted
	)
	phase := phaseHeaders
	var body []byte
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		switch r := req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			if phase != phaseHeaders {
				return status.Error(codes.InvalidArgument, "request_headers received twice")
			}
			if r.RequestHeaders.GetEndOfStream() {
				phase = phaseRouted
				err = st.Send(s.routed(0, false))
			} else {
				phase = phaseBody
				body = body[:0]
			}
		case *extprocv3.ProcessingRequest_RequestBody:
			if phase != phaseBody {
				continue // a repeated EoS chunk after the body ended
			}
			body = append(body, r.RequestBody.GetBody()...)
			if r.RequestBody.GetEndOfStream() {
				phase = phaseRouted
				if err = st.Send(s.routed(len(body), true)); err == nil {
					err = sendStreamed(st, true, body, true)
				}
				body = nil
			}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			if phase == phaseBody {
				// Trailers, not an EoS chunk, ended the body: route, send the body, then the trailers.
				phase = phaseRouted
				if err = st.Send(s.routed(len(body), true)); err == nil {
					err = sendStreamed(st, true, body, false)
				}
				body = nil
			}
			if err == nil {
				err = st.Send(&extprocv3.ProcessingResponse{
					Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}},
				})
			}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			err = st.Send(&extprocv3.ProcessingResponse{
				Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}},
			})
		case *extprocv3.ProcessingRequest_ResponseBody:
			err = sendStreamed(st, false, r.ResponseBody.GetBody(), r.ResponseBody.GetEndOfStream())
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			err = st.Send(&extprocv3.ProcessingResponse{
				Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}},
			})
		default:
			return status.Error(codes.InvalidArgument, "ProcessingRequest carries no request")
		}
		if err != nil {
			return err
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "ext_proc + health address")
	dest := flag.String("destination", "", "x-gateway-destination-endpoint value (host:port)")
	flag.Parse()
	if *dest == "" {
		log.Fatal("--destination is required")
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, &server{destination: *dest})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("envoy.service.ext_proc.v3.ExternalProcessor", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	fmt.Printf("listening %s\n", lis.Addr())
	os.Stdout.Sync()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		gs.Stop()
	}()
	if err := gs.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
