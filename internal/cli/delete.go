package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

func newDeleteCmd(g *globals) *cobra.Command {
	var namespace string
	var files []string
	var ignoreNotFound bool
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME | -f FILE|DIR|-)",
		Short: "Delete resources by kind and name, or those a file describes",
		Long: `Delete one resource by kind and name, or every resource the files name
(-f, as for apply; only apiVersion, kind, metadata.name and
metadata.namespace are read). Resources from files are deleted one at a
time in reverse order, so routes go before the services they attach to;
one that is not there is reported and the others are still deleted.`,
		Example: `  trellis delete httproute inventory-split
  trellis delete hr inventory-split -n shop
  trellis delete -f examples/demo/shop.yaml`,
		Args:              cobra.MaximumNArgs(2),
		ValidArgsFunction: completeKinds,
		RunE: func(cmd *cobra.Command, args []string) error {
			refs, err := deleteRefs(g, files, args, namespace)
			if err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			return deleteAll(cmd.Context(), g, c, refs, ignoreNotFound)
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace (of KIND NAME, and of file resources that name none)")
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or directory of resources to delete, or - for standard input (repeatable)")
	cmd.Flags().BoolVar(&ignoreNotFound, "ignore-not-found", false, "treat a resource that is not there as deleted")
	return cmd
}

// resourceRef names one resource to delete.
type resourceRef struct {
	kind            kindName
	namespace, name string
}

func (r resourceRef) String() string { return r.kind.Kind + " " + r.namespace + "/" + r.name }

// deleteRefs checks the arguments before anything is sent: the kind as get
// checks it, the names, or the files' resources.
func deleteRefs(g *globals, files, args []string, namespace string) ([]resourceRef, error) {
	switch {
	case len(files) > 0 && len(args) > 0:
		return nil, errors.New("delete: give KIND NAME or -f FILE, not both")
	case len(files) > 0:
		return fileRefs(g, files, namespace)
	case len(args) != 2:
		return nil, errors.New("delete: want KIND NAME (e.g. 'trellis delete httproute inventory-split') or -f FILE")
	}
	kind, err := resolveKind(args[0])
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	if err := checkResourceRef("delete", namespace, args[1]); err != nil {
		return nil, err
	}
	return []resourceRef{{kind: kind, namespace: namespace, name: args[1]}}, nil
}

// fileRefs reads the resources named in files, in reverse order (a route
// after the services it attaches to in a file is deleted first).
func fileRefs(g *globals, files []string, namespace string) ([]resourceRef, error) {
	names, err := expandPaths("delete", files)
	if err != nil {
		return nil, err
	}
	var refs []resourceRef
	for _, n := range names {
		data, err := readInput("delete", n, g.stdin)
		if err != nil {
			return nil, err
		}
		if n == "-" {
			n = stdinName
		}
		rs, err := parseRefs(n, data, namespace)
		if err != nil {
			return nil, err
		}
		refs = append(refs, rs...)
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("delete: %s: no resources found", strings.Join(files, ", "))
	}
	slices.Reverse(refs)
	return refs, nil
}

// refHeader is what delete reads of a resource.
type refHeader struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// parseRefs reads kind, name and namespace of every document of one file:
// YAML documents separated by "---" lines, or JSON (an object or an array).
func parseRefs(file string, data []byte, namespace string) ([]resourceRef, error) {
	var refs []resourceRef
	for i, doc := range splitYAMLDocuments(data) {
		var hs []refHeader
		var err error
		if t := bytes.TrimSpace(doc); len(t) > 0 && t[0] == '[' {
			err = yaml.Unmarshal(doc, &hs)
		} else {
			var h *refHeader
			if err = yaml.Unmarshal(doc, &h); h != nil {
				hs = append(hs, *h)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("delete: %s: document %d: %w", file, i+1, err)
		}
		for _, h := range hs {
			kind, err := resolveKind(h.Kind)
			if err != nil {
				return nil, fmt.Errorf("delete: %s: document %d: kind: %w", file, i+1, err)
			}
			ns := h.Metadata.Namespace
			if ns == "" {
				ns = namespace
			}
			if err := checkResourceRef("delete: "+file, ns, h.Metadata.Name); err != nil {
				return nil, err
			}
			refs = append(refs, resourceRef{kind: kind, namespace: ns, name: h.Metadata.Name})
		}
	}
	return refs, nil
}

// splitYAMLDocuments splits at "---" lines and drops empty documents.
func splitYAMLDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(stripComments(cur.Bytes()))) > 0 {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	for line := range bytes.Lines(data) {
		t := bytes.TrimRight(line, " \t\r\n")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) {
			flush()
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}

// stripComments drops whole-line comments, so a document of comments only
// counts as empty.
func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.Lines(doc) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// deleteAll deletes refs one by one, going on past one not found, and fails
// if any failed.
func deleteAll(ctx context.Context, g *globals, c *adminClient, refs []resourceRef, ignoreNotFound bool) error {
	var failed []string
	for _, r := range refs {
		path := "/v1/resources/" + url.PathEscape(r.kind.Plural) + "/" + url.PathEscape(r.namespace) + "/" + url.PathEscape(r.name)
		err := c.do(ctx, "DELETE", path, nil, nil)
		switch {
		case err == nil:
			fmt.Fprintf(g.stdout, "%s deleted\n", r)
		case isNotFound(err) && ignoreNotFound:
		case isNotFound(err):
			failed = append(failed, r.String()+" not found")
		default:
			failed = append(failed, fmt.Sprintf("%s: %v", r, err))
		}
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("delete: %s", failed[0])
	}
	return fmt.Errorf("delete: %d failed:\n  %s", len(failed), strings.Join(failed, "\n  "))
}
