// Package check validates the SPIKE Helm chart: it lints and renders the
// chart with helm (built from its Go module) and decodes every rendered
// object strictly into its Kubernetes API type.
package check

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The Go module of SPIRE's controller manager is not served by the module
// proxy this project builds from, so ClusterSPIFFEID (spire.spiffe.io/v1alpha1)
// is declared here with exactly the fields of the upstream type
// (api/v1alpha1/clusterspiffeid_types.go): strict decoding then refuses a
// field the controller manager does not know, as for the built-in kinds.

// ClusterSPIFFEID is SPIRE's cluster-wide registration template.
type ClusterSPIFFEID struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`

	Spec   ClusterSPIFFEIDSpec   `json:"spec"`
	Status ClusterSPIFFEIDStatus `json:"status"`
}

// ClusterSPIFFEIDSpec is the desired registration.
type ClusterSPIFFEIDSpec struct {
	SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
	TTL                       metav1.Duration       `json:"ttl"`
	JWTTTL                    metav1.Duration       `json:"jwtTtl"`
	DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
	WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
	FederatesWith             []string              `json:"federatesWith,omitempty"`
	NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
	Admin                     bool                  `json:"admin,omitempty"`
	Downstream                bool                  `json:"downstream,omitempty"`
	AutoPopulateDNSNames      bool                  `json:"autoPopulateDNSNames,omitempty"`
	ClassName                 string                `json:"className,omitempty"`
	Fallback                  bool                  `json:"fallback,omitempty"`
	Hint                      string                `json:"hint,omitempty"`
}

// ClusterSPIFFEIDStatus is what the controller manager reports.
type ClusterSPIFFEIDStatus struct {
	Stats ClusterSPIFFEIDStats `json:"stats"`
}

// ClusterSPIFFEIDStats are the last reconciliation's counts.
type ClusterSPIFFEIDStats struct {
	NamespacesSelected     int `json:"namespacesSelected"`
	NamespacesIgnored      int `json:"namespacesIgnored"`
	PodsSelected           int `json:"podsSelected"`
	PodEntryRenderFailures int `json:"podEntryRenderFailures"`
	EntriesMasked          int `json:"entriesMasked"`
	EntriesToSet           int `json:"entriesToSet"`
	EntryFailures          int `json:"entryFailures"`
}
