# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_snapshot_scheduler_global_optspecs
    string join \n c/config= simulate log-format= v/verbose q/quiet h/help V/version
end

function __fish_snapshot_scheduler_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_snapshot_scheduler_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_snapshot_scheduler_using_subcommand
    set -l cmd (__fish_snapshot_scheduler_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -s V -l version -d 'Print version'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "check" -d 'Validate the config and show each policy\'s servers, retention and next fires'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "list" -d 'List snapshots with the policy that manages each (`-` for hand-made ones)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "restore" -d 'Restore a server from a snapshot (overwrites all its data)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "plan" -d 'Show what each policy would create and delete now, and why. Changes nothing'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "once" -d 'Run the selected policies now for their current slot and wait until done'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "status" -d 'Per policy and server: the newest completed snapshot and its age, the last run, the next fire'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "run" -d 'Run as a service: fire every policy on its schedule until SIGTERM'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "simulate-provider" -d 'Serve a simulated provider over HTTP for trying other tools against it'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL (needs no config)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "man" -d 'Print the man page in roff (needs no config); with --dir, write one page per command there'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -l connect -d 'Also reach the provider\'s API (one listing request) and, with `[ha]`, etcd'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand check" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -l server -d 'Only this server' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -l json -d 'Machine-readable output'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand list" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -l yes -d 'Do not ask; needed without a terminal'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -l wait -d 'Wait until the server runs again'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand restore" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -l policy -d 'Only this policy' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -l server -d 'Only this server' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -l json -d 'Machine-readable output'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand plan" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -l policy -d 'Only this policy' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -l server -d 'Only this server' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -l dry-run -d 'Go through every step but change nothing'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand once" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -l policy -d 'Only this policy' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -l server -d 'Only this server' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -l json -d 'Machine-readable output'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -l nagios -d 'One Nagios/Icinga line; exit 0/1/2/3 for OK/WARNING/CRITICAL/UNKNOWN'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand status" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand run" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand run" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand run" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand run" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand run" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand run" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -l listen -d 'The address to serve on' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -l server -d 'Server ids to simulate (default: the config\'s, or 12345 and 12346)' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -l token -d 'The bearer token clients must send (default: printed random one)' -r
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand simulate-provider" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -l dir -d 'Write snapshot-scheduler.1 and snapshot-scheduler-COMMAND.1 into this directory' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -s c -l config -d 'The config file' -r -F
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -l log-format -d 'Override the config\'s log_format' -r -f -a "auto\t''
text\t''
json\t''
journald\t''"
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -l simulate -d 'Talk to a fresh built-in simulated provider whose servers are the config\'s (no account or token needed)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -s v -l verbose -d 'More log output (-v debug, -vv trace)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -s q -l quiet -d 'Less log output (-q warnings, -qq errors only)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand man" -s h -l help -d 'Print help'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "check" -d 'Validate the config and show each policy\'s servers, retention and next fires'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "list" -d 'List snapshots with the policy that manages each (`-` for hand-made ones)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "restore" -d 'Restore a server from a snapshot (overwrites all its data)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "plan" -d 'Show what each policy would create and delete now, and why. Changes nothing'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "once" -d 'Run the selected policies now for their current slot and wait until done'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "status" -d 'Per policy and server: the newest completed snapshot and its age, the last run, the next fire'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "run" -d 'Run as a service: fire every policy on its schedule until SIGTERM'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "simulate-provider" -d 'Serve a simulated provider over HTTP for trying other tools against it'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "completions" -d 'Print the shell completion script for SHELL (needs no config)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "man" -d 'Print the man page in roff (needs no config); with --dir, write one page per command there'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand help; and not __fish_seen_subcommand_from check list restore plan once status run simulate-provider completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c snapshot-scheduler -n "__fish_snapshot_scheduler_using_subcommand completions" -f -a "bash elvish fish powershell zsh"
