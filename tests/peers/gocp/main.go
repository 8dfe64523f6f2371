// Command gocp-server is a test peer: an ADS server (SotW and delta) built on Envoy's
// go-control-plane library, serving one snapshot to every node.
//
// The snapshot comes from a JSON file written by tests/support/gocp.py from the same
// config files `sockmesh xds-server` serves (so both servers serve the same resources):
//
//	{"version": "v1", "resources": [{"type_url": "...", "value": "<base64 proto>"}]}
//
// Resources are carried as serialized protos, so nested extensions this program has no Go
// type for (Istio's private filters) pass through byte for byte.
//
// The file is re-read on SIGHUP and whenever its content changes (polled).  A file that
// cannot be decoded is reported and the last good snapshot keeps serving.
//
// Everything the server does is printed to stdout as one JSON object per line (listening,
// serving, request, response, reload_error, stream_open, stream_closed) so tests can
// assert on what the server saw, e.g. how it answers a NACK.
//
// Only loopback listen addresses are accepted.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Register the resource types a snapshot may hold.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
)

// allNodes is the snapshot key: every node gets the same snapshot.
const allNodes = "all"

type constantHash struct{}

func (constantHash) ID(*core.Node) string { return allNodes }

type snapshotFile struct {
	Version   string `json:"version"`
	Resources []struct {
		TypeURL string `json:"type_url"`
		Value   string `json:"value"`
	} `json:"resources"`
}

var outMu sync.Mutex

// emit prints one event as a JSON line on stdout.
func emit(event string, fields map[string]any) {
	fields["event"] = event
	fields["time"] = time.Now().UTC().Format(time.RFC3339Nano)
	b, err := json.Marshal(fields)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"event":"emit_error","error":%q}`, err.Error()))
	}
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

// loadSnapshot decodes the snapshot file; the version defaults to a hash of the content.
func loadSnapshot(path string) (*cachev3.Snapshot, string, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", nil, err
	}
	var f snapshotFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, "", raw, fmt.Errorf("%s: invalid JSON: %w", path, err)
	}
	sum := sha256.Sum256(raw)
	version := f.Version
	if version == "" {
		version = hex.EncodeToString(sum[:6])
	}
	byType := map[resource.Type][]types.Resource{}
	seen := map[string]bool{}
	for i, r := range f.Resources {
		mt, err := protoregistry.GlobalTypes.FindMessageByURL(r.TypeURL)
		if err != nil {
			return nil, "", raw, fmt.Errorf("%s: resources[%d]: unknown type %q", path, i, r.TypeURL)
		}
		data, err := base64.StdEncoding.DecodeString(r.Value)
		if err != nil {
			return nil, "", raw, fmt.Errorf("%s: resources[%d]: bad base64: %w", path, i, err)
		}
		msg := mt.New().Interface()
		if err := proto.Unmarshal(data, msg); err != nil {
			return nil, "", raw, fmt.Errorf("%s: resources[%d]: bad %s: %w", path, i, r.TypeURL, err)
		}
		res, ok := msg.(types.Resource)
		if !ok {
			return nil, "", raw, fmt.Errorf("%s: resources[%d]: %s is not a resource", path, i, r.TypeURL)
		}
		name := cachev3.GetResourceName(res)
		key := r.TypeURL + "\x00" + name
		if name == "" || seen[key] {
			return nil, "", raw, fmt.Errorf("%s: resources[%d]: empty or duplicate name %q", path, i, name)
		}
		seen[key] = true
		byType[r.TypeURL] = append(byType[r.TypeURL], res)
	}
	snap, err := cachev3.NewSnapshot(version, byType)
	if err != nil {
		return nil, "", raw, fmt.Errorf("%s: %w", path, err)
	}
	return snap, version, raw, nil
}

func names(rs []string) []string {
	if rs == nil {
		return []string{}
	}
	return rs
}

func errDetail(s interface{ GetMessage() string }) any {
	if s == nil || s.GetMessage() == "" {
		return nil
	}
	return s.GetMessage()
}

func callbacks() serverv3.CallbackFuncs {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, typ string) error {
			emit("stream_open", map[string]any{"stream": id, "delta": false})
			return nil
		},
		StreamClosedFunc: func(id int64, _ *core.Node) {
			emit("stream_closed", map[string]any{"stream": id, "delta": false})
		},
		DeltaStreamOpenFunc: func(_ context.Context, id int64, typ string) error {
			emit("stream_open", map[string]any{"stream": id, "delta": true})
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) {
			emit("stream_closed", map[string]any{"stream": id, "delta": true})
		},
		StreamRequestFunc: func(id int64, r *discovery.DiscoveryRequest) error {
			var detail any
			if r.GetErrorDetail() != nil {
				detail = errDetail(r.GetErrorDetail())
			}
			emit("request", map[string]any{
				"stream": id, "delta": false, "type": r.GetTypeUrl(),
				"version": r.GetVersionInfo(), "nonce": r.GetResponseNonce(),
				"names": names(r.GetResourceNames()), "error": detail,
				"node": r.GetNode().GetId(),
			})
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, r *discovery.DiscoveryResponse) {
			emit("response", map[string]any{
				"stream": id, "delta": false, "type": r.GetTypeUrl(),
				"version": r.GetVersionInfo(), "nonce": r.GetNonce(),
				"resources": len(r.GetResources()),
			})
		},
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			var detail any
			if r.GetErrorDetail() != nil {
				detail = errDetail(r.GetErrorDetail())
			}
			emit("request", map[string]any{
				"stream": id, "delta": true, "type": r.GetTypeUrl(),
				"nonce": r.GetResponseNonce(), "names": names(r.GetResourceNamesSubscribe()),
				"unsubscribe": names(r.GetResourceNamesUnsubscribe()), "error": detail,
				"node": r.GetNode().GetId(),
			})
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
			emit("response", map[string]any{
				"stream": id, "delta": true, "type": r.GetTypeUrl(),
				"version": r.GetSystemVersionInfo(), "nonce": r.GetNonce(),
				"resources": len(r.GetResources()), "removed": names(r.GetRemovedResources()),
			})
		},
	}
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q is not a loopback IP", addr)
	}
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback HOST:PORT to serve ADS on (port 0: any free port)")
	path := flag.String("snapshot", "", "snapshot JSON file (see tests/support/gocp.py)")
	poll := flag.Duration("poll", 200*time.Millisecond, "how often to check the snapshot file for changes")
	ads := flag.Bool("ads-consistency", true, "go-control-plane's ADS mode: answer a request naming "+
		"resources only when the snapshot has all of them")
	flag.Parse()
	if *path == "" {
		fmt.Fprintln(os.Stderr, "gocp-server: --snapshot is required")
		os.Exit(2)
	}
	if err := checkLoopback(*listen); err != nil {
		fmt.Fprintln(os.Stderr, "gocp-server:", err)
		os.Exit(2)
	}

	snapCache := cachev3.NewSnapshotCache(*ads, constantHash{}, log.NewDefaultLogger())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var lastRaw []byte
	reload := func(why string) error {
		snap, version, raw, err := loadSnapshot(*path)
		if raw != nil && lastRaw != nil && string(raw) == string(lastRaw) {
			return nil
		}
		lastRaw = raw
		if err != nil {
			emit("reload_error", map[string]any{"error": err.Error(), "why": why})
			return err
		}
		if cerr := snap.Consistent(); cerr != nil {
			// Served anyway: a test may serve an inconsistent snapshot on purpose.
			emit("inconsistent", map[string]any{"version": version, "error": cerr.Error()})
		}
		if err := snapCache.SetSnapshot(ctx, allNodes, snap); err != nil {
			emit("reload_error", map[string]any{"error": err.Error(), "why": why})
			return err
		}
		emit("serving", map[string]any{"version": version, "why": why})
		return nil
	}
	if err := reload("start"); err != nil {
		fmt.Fprintln(os.Stderr, "gocp-server: cannot load the snapshot:", err)
		os.Exit(1)
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gocp-server: cannot listen:", err)
		os.Exit(1)
	}
	grpcServer := grpc.NewServer(
		grpc.MaxRecvMsgSize(256<<20),
		grpc.MaxSendMsgSize(256<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime: 5 * time.Second, PermitWithoutStream: true,
		}),
	)
	xds := serverv3.NewServer(ctx, snapCache, callbacks())
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)
	emit("listening", map[string]any{"address": lis.Addr().String()})

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		ticker := time.NewTicker(*poll)
		defer ticker.Stop()
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGHUP {
					_ = reload("SIGHUP")
					continue
				}
				emit("stopping", map[string]any{"signal": s.String()})
				grpcServer.Stop()
				return
			case <-ticker.C:
				_ = reload("poll")
			}
		}
	}()
	if err := grpcServer.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		fmt.Fprintln(os.Stderr, "gocp-server:", err)
		os.Exit(1)
	}
}
