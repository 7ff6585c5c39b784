// Executes an Ollama TEMPLATE the way Ollama v0.32.15 does for a chat request, written for packager from a
// reading of Ollama's template/template.go (Parse, Vars, Execute, collate, deleteNode) and server/prompt.go
// (renderPrompt). Ollama's own code is not copied; what it does is:
//
//   - the template is parsed with missingkey=zero and the functions json, currentDate, yesterdayDate and
//     toTypeScriptType; when it names neither .Messages nor .Response anywhere, {{ .Response }} is appended;
//   - messages are collated: consecutive messages of one role (but tool) become one, joined by "\n\n", and every
//     system message's content, joined by "\n\n", is .System;
//   - a template that names .Messages runs once on a map: System, Messages, Tools, Response (""), Think,
//     ThinkLevel, IsThinkSet; a map, so a field it does not hold prints "<no value>" instead of failing;
//   - any other template runs once per user/assistant exchange on System, Prompt and Response, and for the last
//     one with everything after the first .Response cut away (where the model's answer goes).
//
// Input on stdin: {"template": "...", "messages": [{"role", "content", "thinking", "tool_calls", "tool_name",
// "tool_call_id"}], "tools": [...], "think": null | true | false | "high" | ..., "date": "YYYY-MM-DD"}.
// Output on stdout: the prompt, byte for byte.
//
// With "tag": true instead, the output is the tag Ollama's tool-call parser looks for in the model's output,
// read off the template as tools/template.go parseTag reads it (v0.32.15, unchanged in v0.33.0-rc2): the first
// text that is not blank inside the first {{ if }} whose condition names .ToolCalls, searched depth first
// through if, range and with bodies, a search that gives up at the first if, range or with holding none; cut
// before its first "{" and trimmed; "{" when there is none (any JSON object is then tried as a call).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type jsonObject map[string]any

// objectJSON is what a template prints for a map: its JSON, "{}" for none (Ollama's templateArgs and
// templateProperties).
func objectJSON(v any, none bool) string {
	if none {
		return "{}"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func (o jsonObject) String() string { return objectJSON(map[string]any(o), o == nil) }

type propertyType []string

func (p *propertyType) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*p = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return err
	}
	*p = many
	return nil
}

func (p propertyType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

func (p propertyType) String() string {
	if len(p) == 1 {
		return p[0]
	}
	if len(p) == 0 {
		return ""
	}
	return fmt.Sprintf("%v", []string(p))
}

type property struct {
	AnyOf       []property          `json:"anyOf,omitempty"`
	Type        propertyType        `json:"type,omitempty"`
	Items       any                 `json:"items,omitempty"`
	Description string              `json:"description,omitempty"`
	Enum        []any               `json:"enum,omitempty"`
	Properties  map[string]property `json:"properties,omitempty"`
	Required    []string            `json:"required,omitempty"`
}

type properties map[string]property

func (p properties) String() string { return objectJSON(map[string]property(p), p == nil) }

type parameters struct {
	Type       string     `json:"type"`
	Defs       any        `json:"$defs,omitempty"`
	Items      any        `json:"items,omitempty"`
	Required   []string   `json:"required,omitempty"`
	Properties properties `json:"properties"`
}

type function struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Parameters  parameters `json:"parameters"`
}

type tool struct {
	Type     string   `json:"type"`
	Items    any      `json:"items,omitempty"`
	Function function `json:"function"`
}

func (t tool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type tools []tool

func (t tools) String() string {
	b, _ := json.Marshal([]tool(t))
	return string(b)
}

type callFunction struct {
	Index     int        `json:"index"`
	Name      string     `json:"name"`
	Arguments jsonObject `json:"arguments"`
}

type toolCall struct {
	ID       string       `json:"id"`
	Function callFunction `json:"function"`
}

type message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking"`
	Images     []string   `json:"images"`
	ToolCalls  []toolCall `json:"tool_calls"`
	ToolName   string     `json:"tool_name"`
	ToolCallID string     `json:"tool_call_id"`
}

type request struct {
	Template string    `json:"template"`
	Messages []message `json:"messages"`
	Tools    tools     `json:"tools"`
	Think    any       `json:"think"` // null, a boolean, or a level: "high", "medium", "low", "max"
	Date     string    `json:"date"`
	Tag      bool      `json:"tag"`
}

func typeScriptType(p property) string {
	if len(p.AnyOf) > 0 {
		var each []string
		for _, q := range p.AnyOf {
			each = append(each, typeScriptType(q))
		}
		return strings.Join(each, " | ")
	}
	var each []string
	for _, t := range p.Type {
		switch t {
		case "string", "boolean", "null":
			each = append(each, t)
		case "number", "integer":
			each = append(each, "number")
		case "array":
			each = append(each, "any[]")
		case "object":
			each = append(each, "Record<string, any>")
		default:
			each = append(each, "any")
		}
	}
	if len(each) == 0 {
		return "any"
	}
	return strings.Join(each, " | ")
}

func functions(date time.Time) template.FuncMap {
	return template.FuncMap{
		"json": func(v any) string {
			b, _ := json.Marshal(v)
			return string(b)
		},
		"currentDate":   func(...string) string { return date.Format("2006-01-02") },
		"yesterdayDate": func(...string) string { return date.AddDate(0, 0, -1).Format("2006-01-02") },
		"toTypeScriptType": func(v any) string {
			if p, ok := v.(property); ok {
				return typeScriptType(p)
			}
			return "any"
		},
	}
}

// identifiers: every field and variable name the template uses, lower-cased (Ollama's Vars).
func identifiers(node parse.Node, into map[string]bool) {
	switch n := node.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				identifiers(c, into)
			}
		}
	case *parse.ActionNode:
		identifiers(n.Pipe, into)
	case *parse.TemplateNode:
		identifiers(n.Pipe, into)
	case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
		branch(branchOf(n), into)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				for _, a := range c.Args {
					identifiers(a, into)
				}
			}
		}
	case *parse.FieldNode:
		for _, id := range n.Ident {
			into[strings.ToLower(id)] = true
		}
	case *parse.VariableNode:
		for _, id := range n.Ident {
			into[strings.ToLower(id)] = true
		}
	}
}

// branchOf: what an if, range or with node shares (its pipeline, its list, its else list).
func branchOf(node parse.Node) *parse.BranchNode {
	switch n := node.(type) {
	case *parse.IfNode:
		return &n.BranchNode
	case *parse.RangeNode:
		return &n.BranchNode
	case *parse.WithNode:
		return &n.BranchNode
	}
	return nil
}

func branch(b *parse.BranchNode, into map[string]bool) {
	identifiers(b.Pipe, into)
	identifiers(b.List, into)
	if b.ElseList != nil {
		identifiers(b.ElseList, into)
	}
}

// cutAfterResponse drops the first .Response field and everything after it, in document order, from a copy of
// the tree (Ollama's deleteNode with its "cut" predicate): an action, pipe or command left empty goes too.
func cutAfterResponse(root *parse.ListNode) *parse.ListNode {
	cut := false
	var walk func(parse.Node) parse.Node
	walk = func(node parse.Node) parse.Node {
		if f, ok := node.(*parse.FieldNode); ok {
			for _, id := range f.Ident {
				if id == "Response" {
					cut = true
					return nil
				}
			}
		}
		if cut {
			return nil
		}
		switch n := node.(type) {
		case *parse.ListNode:
			var kept []parse.Node
			for _, c := range n.Nodes {
				if k := walk(c); k != nil {
					kept = append(kept, k)
				}
			}
			n.Nodes = kept
		case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
			walkBranch(branchOf(n), walk)
		case *parse.ActionNode:
			pipe := walk(n.Pipe)
			if pipe == nil {
				return nil
			}
			n.Pipe = pipe.(*parse.PipeNode)
		case *parse.PipeNode:
			var cmds []*parse.CommandNode
			for _, c := range n.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					if k := walk(a); k != nil {
						args = append(args, k)
					}
				}
				if len(args) == 0 {
					return nil
				}
				c.Args = args
				cmds = append(cmds, c)
			}
			if len(cmds) == 0 {
				return nil
			}
			n.Cmds = cmds
		}
		return node
	}
	return walk(root.CopyList()).(*parse.ListNode)
}

func walkBranch(b *parse.BranchNode, walk func(parse.Node) parse.Node) {
	b.List = walk(b.List).(*parse.ListNode)
	if b.ElseList != nil {
		b.ElseList = walk(b.ElseList).(*parse.ListNode)
	}
}

// collate merges consecutive messages of one role (but tool) and gathers the system messages' content.
func collate(in []message) (string, []*message) {
	var system []string
	var out []*message
	for i := range in {
		m := in[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func execute(req request) (string, error) {
	date := time.Now()
	if req.Date != "" {
		d, err := time.Parse("2006-01-02", req.Date)
		if err != nil {
			return "", fmt.Errorf("date %q is not YYYY-MM-DD", req.Date)
		}
		date = d
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(functions(date)).Parse(req.Template)
	if err != nil {
		return "", fmt.Errorf("template does not parse: %w", err)
	}
	used := map[string]bool{}
	for _, t := range tmpl.Templates() {
		if t.Tree != nil {
			identifiers(t.Tree.Root, used)
		}
	}
	if !used["messages"] && !used["response"] {
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, &parse.ActionNode{NodeType: parse.NodeAction,
			Pipe: &parse.PipeNode{NodeType: parse.NodePipe, Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand,
				Args: []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}}}}}})
	}
	think, thinkLevel := false, "" // Ollama's ThinkValue.Bool and .String
	switch v := req.Think.(type) {
	case bool:
		think = v
		if v {
			thinkLevel = "medium"
		}
	case string:
		think = v == "high" || v == "medium" || v == "low" || v == "max"
		thinkLevel = v
	}
	system, messages := collate(req.Messages)
	values := func(extra map[string]any) map[string]any {
		v := map[string]any{"Response": "", "Think": think, "ThinkLevel": thinkLevel, "IsThinkSet": req.Think != nil}
		for k, x := range extra {
			v[k] = x
		}
		return v
	}
	var out bytes.Buffer
	if used["messages"] {
		// Tools stays typed when there are none: {{ .Tools }} then prints "null", {{ if .Tools }} is false
		err := tmpl.Execute(&out, values(map[string]any{"System": system, "Messages": messages, "Tools": req.Tools}))
		return out.String(), err
	}
	system = ""
	var prompt, response string
	turn := func() error {
		err := tmpl.Execute(&out, values(map[string]any{"System": system, "Prompt": prompt, "Response": response}))
		system, prompt, response = "", "", ""
		return err
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := turn(); err != nil {
					return "", err
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := turn(); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	// As Ollama does, the last exchange runs on a bare template: without the functions (a template that calls
	// json or currentDate fails here, in Ollama too) and with the default missingkey.
	last, err := template.New("").AddParseTree("", &parse.Tree{Root: cutAfterResponse(tmpl.Tree.Root)})
	if err != nil {
		return "", err
	}
	err = last.Execute(&out, values(map[string]any{"System": system, "Prompt": prompt, "Response": response}))
	return out.String(), err
}

// toolCallsIf: the first if node, in document order, one of whose condition's arguments is a field naming
// ToolCalls (a variable such as $m.ToolCalls does not count), searched through if, range and with bodies.
func toolCallsIf(nodes []parse.Node) *parse.IfNode {
	for _, node := range nodes {
		if n, ok := node.(*parse.IfNode); ok {
			for _, cmd := range n.Pipe.Cmds {
				for _, arg := range cmd.Args {
					if f, ok := arg.(*parse.FieldNode); ok && contains(f.Ident, "ToolCalls") {
						return n
					}
				}
			}
		}
		if l, ok := node.(*parse.ListNode); ok {
			if found := toolCallsIf(l.Nodes); found != nil {
				return found
			}
		}
		if b := branchOf(node); b != nil {
			if found := toolCallsIf(b.List.Nodes); found != nil {
				return found
			}
			if b.ElseList != nil {
				if found := toolCallsIf(b.ElseList.Nodes); found != nil {
					return found
				}
			}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// firstText: the first text node that is not blank; an if, range or with ends the search, found or not.
func firstText(nodes []parse.Node) *parse.TextNode {
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.TextNode:
			if len(bytes.TrimSpace(n.Text)) > 0 {
				return n
			}
		case *parse.ListNode:
			if found := firstText(n.Nodes); found != nil {
				return found
			}
		case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
			b := branchOf(n)
			if found := firstText(b.List.Nodes); found != nil {
				return found
			}
			if b.ElseList != nil {
				if found := firstText(b.ElseList.Nodes); found != nil {
					return found
				}
			}
			return nil
		}
	}
	return nil
}

func toolCallTag(text string) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(functions(time.Now())).Parse(text)
	if err != nil {
		return "", fmt.Errorf("template does not parse: %w", err)
	}
	if tmpl.Tree == nil {
		return "{", nil
	}
	found := toolCallsIf(tmpl.Tree.Root.Nodes)
	if found == nil {
		return "{", nil
	}
	node := firstText(found.List.Nodes)
	if node == nil {
		return "{", nil
	}
	tag := strings.ReplaceAll(string(node.Text), "\r\n", "\n")
	if i := strings.Index(tag, "{"); i >= 0 {
		tag = tag[:i]
	}
	if tag = strings.TrimSpace(tag); tag == "" {
		return "{", nil
	}
	return tag, nil
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	execute := execute
	if req.Tag {
		execute = func(req request) (string, error) { return toolCallTag(req.Template) }
	}
	prompt, err := execute(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not execute:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(prompt)
}
