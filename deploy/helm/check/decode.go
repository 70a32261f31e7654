package check

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// customKinds are the CRD kinds the chart renders, beside the built-in
// kinds of client-go's scheme.
var customKinds = map[schema.GroupVersionKind]func() any{
	monitoringv1.SchemeGroupVersion.WithKind("ServiceMonitor"): func() any {
		return &monitoringv1.ServiceMonitor{}
	},
	{Group: "spire.spiffe.io", Version: "v1alpha1", Kind: "ClusterSPIFFEID"}: func() any {
		return &ClusterSPIFFEID{}
	},
}

// newObject returns a pointer to an empty value of kind's Go type, or an
// error for a kind this check does not know.
func newObject(kind schema.GroupVersionKind) (any, error) {
	if make, ok := customKinds[kind]; ok {
		return make(), nil
	}
	if clientgoscheme.Scheme.Recognizes(kind) {
		return clientgoscheme.Scheme.New(kind)
	}
	return nil, fmt.Errorf("unknown kind %s", kind)
}

// DecodeStrict decodes one YAML document into its API type, refusing an
// unknown or misspelled field (case counts), a duplicate field and an
// unknown kind.
func DecodeStrict(doc []byte) (schema.GroupVersionKind, any, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return schema.GroupVersionKind{}, nil, fmt.Errorf("not a YAML object: %w", err)
	}
	if meta.APIVersion == "" || meta.Kind == "" {
		return schema.GroupVersionKind{}, nil, errors.New("no apiVersion or kind")
	}
	kind := schema.FromAPIVersionAndKind(meta.APIVersion, meta.Kind)
	value, err := newObject(kind)
	if err != nil {
		return kind, nil, err
	}
	// As the API server decodes: YAML to JSON refusing duplicate keys, then
	// JSON matched case-sensitively, refusing unknown fields. (encoding/json,
	// which sigs.k8s.io/yaml.UnmarshalStrict uses, matches field names
	// case-insensitively, so it accepts "readOnlyRootFileSystem".)
	data, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return kind, nil, fmt.Errorf("%s: %w", kind.Kind, err)
	}
	strictErrors, err := kjson.UnmarshalStrict(data, value)
	if err != nil {
		return kind, nil, fmt.Errorf("%s: %w", kind.Kind, err)
	}
	if len(strictErrors) > 0 {
		return kind, nil, fmt.Errorf("%s: %w", kind.Kind, errors.Join(strictErrors...))
	}
	return kind, value, nil
}

// SplitDocuments splits helm's output into its non-empty YAML documents,
// each with the template it came from.
func SplitDocuments(rendered []byte) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(rendered)))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

// stripComments drops whole-line comments, so a document of comments only
// counts as empty.
func stripComments(doc []byte) []byte {
	var kept [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			kept = append(kept, line)
		}
	}
	return bytes.Join(kept, []byte("\n"))
}
