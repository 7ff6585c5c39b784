// Renders an Ollama TEMPLATE with Go's text/template, as Ollama does.
// Input on stdin: {"template": "...", "data": {"Messages": [{"Role": "...", "Content": "..."}], "System": "", ...}}
// Output on stdout: the rendered prompt, byte for byte.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type message struct {
	Role    string
	Content string
}

type data struct {
	System   string
	Prompt   string
	Response string
	Messages []message
}

type request struct {
	Template string `json:"template"`
	Data     data   `json:"data"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("ollama").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(1)
	}
	if err := tmpl.Execute(os.Stdout, req.Data); err != nil {
		fmt.Fprintln(os.Stderr, "template does not execute:", err)
		os.Exit(1)
	}
}
