package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	rcli "github.com/resyncd/resync/internal/cli"
)

// newRoot builds resyncctl's cobra command tree: the global flags are the
// root's persistent flags; each entry of commands() is a subcommand ("rbac
// apply" under "rbac") whose RunE hands its function to exec; completion
// writes shell completion scripts.
func newRoot(g *globals, stdout, stderr io.Writer, exec func(*cobra.Command, func(context.Context, *env) error) error) *cobra.Command {
	root := &cobra.Command{
		Use:           "resyncctl",
		Short:         "the operator CLI of resync",
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(c *cobra.Command, args []string) error {
			return usagef("no command given")
		},
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usagef("%v", rcli.FlagError(err)) })
	g.register(root.PersistentFlags())
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))

	rbacCmd := rbacGroup()
	root.AddCommand(rbacCmd)
	for _, cmd := range commands() {
		parent, name := root, cmd.name
		if rest, ok := strings.CutPrefix(cmd.name, "rbac "); ok {
			parent, name = rbacCmd, rest
		}
		parent.AddCommand(subcommand(cmd, name, exec))
	}
	root.AddCommand(completionCmd())

	root.SetHelpFunc(func(c *cobra.Command, _ []string) { printHelp(c.OutOrStdout(), c) })
	return root
}

// rbacGroup is the "rbac" command, the parent of rbac apply and status.
func rbacGroup() *cobra.Command {
	return &cobra.Command{
		Use:   "rbac",
		Short: "etcd users and least-privilege roles: apply or status",
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("rbac needs a command: apply or status")
			}
			return usagef("unknown command %q", "rbac "+args[0])
		},
	}
}

// subcommand is the cobra command of cmd, named name under its parent: it
// takes no arguments, and its RunE hands cmd's function to exec.
func subcommand(cmd command, name string, exec func(*cobra.Command, func(context.Context, *env) error) error) *cobra.Command {
	sub := &cobra.Command{
		Use:   strings.TrimSpace(name + " " + cmd.args),
		Short: cmd.summary,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			return nil
		},
		ValidArgsFunction: cobra.NoFileCompletions,
	}
	runCmd := cmd.setup(sub.Flags())
	sub.RunE = func(c *cobra.Command, _ []string) error { return exec(c, runCmd) }
	return sub
}

// printHelp writes the usage of c: its synopsis, summary, commands, flags
// and the global flags with their environment variables.
func printHelp(w io.Writer, c *cobra.Command) {
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(w, "Usage: %s [global flags] <command> [flags]\n\n", c.CommandPath())
		if c.HasParent() {
			fmt.Fprintf(w, "%s.\n\n", c.Short)
		}
		fmt.Fprint(w, "Commands:\n")
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() {
				fmt.Fprintf(w, "  %-16s %s\n", s.Name(), s.Short)
			}
		}
		if !c.HasParent() {
			fmt.Fprint(w, "  help [command]   show this help, or a command's flags\n")
		}
	} else {
		fmt.Fprintf(w, "Usage: %s%s\n\n%s.\n", c.Root().Name(), strings.TrimPrefix(c.UseLine(), c.Root().Name()), c.Short)
		if fs := c.LocalNonPersistentFlags(); fs.HasAvailableFlags() {
			fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
		}
	}
	fmt.Fprintf(w, "\nGlobal flags (before or after the command; each also read from %s<NAME>,\ne.g. %s, %s, when not given):\n%s",
		rcli.EnvPrefix, rcli.EnvName("endpoints"), rcli.EnvName("output"), c.Root().PersistentFlags().FlagUsages())
}

// completionCmd is `completion bash|zsh|fish|powershell`: a script that
// completes resyncctl's commands and flags. Bash gets cobra's first
// generation script: self-contained, it lists the commands and flags.
func completionCmd() *cobra.Command {
	shells := []string{"bash", "zsh", "fish", "powershell"}
	return &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "print a shell completion script (source <(resyncctl completion bash))",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("completion needs one shell: %s", strings.Join(shells, ", "))
			}
			return nil
		},
		ValidArgs: shells,
		RunE: func(c *cobra.Command, args []string) error {
			root, w := c.Root(), c.OutOrStdout()
			switch args[0] {
			case "bash":
				return root.GenBashCompletion(w)
			case "zsh":
				return root.GenZshCompletion(w)
			case "fish":
				return root.GenFishCompletion(w, true)
			case "powershell":
				return root.GenPowerShellCompletionWithDesc(w)
			}
			return usagef("completion: unknown shell %q: use %s", args[0], strings.Join(shells, ", "))
		},
	}
}

// flagLookup finds a flag by long name, or by shorthand as "\x00"+letter,
// among the global flags and every command's own (rcli.Normalize's lookup:
// it runs before cobra knows the command).
func flagLookup(root *cobra.Command) func(string) *pflag.Flag {
	help := pflag.NewFlagSet("help", pflag.ContinueOnError)
	help.BoolP("help", "h", false, "")
	sets := []*pflag.FlagSet{root.PersistentFlags(), help}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			sets = append(sets, s.LocalNonPersistentFlags())
			walk(s)
		}
	}
	walk(root)
	return rcli.Lookup(sets...)
}
