#!/bin/bash
# Forced command of every sandbox sshd, modelled on HTCondor's
# condor_ssh_to_job_shell_setup: authorized_keys says
#   command="<this script> <sshd dir>/env.sh"
# so sshd runs it for every session (shell, exec and subsystem requests alike;
# for `sftp` sshd puts the sftp-server path in SSH_ORIGINAL_COMMAND).
#
# Installed into a pool as libexec/condor_ssh_to_job_shell_setup.

# Make sure the usual tools are reachable whatever the job's PATH is.
PATH=$PATH:/bin:/usr/bin

# Restore the job's environment, saved when this sshd was set up.
if [ "$1" != "" ]; then
  . "$1"
fi

# Go to the job's working directory.
for dir in "${_CONDOR_JOB_IWD}" "${_CONDOR_SCRATCH_DIR}"; do
  if cd "${dir}"; then
    break
  fi
done

if [ "${SSH_ORIGINAL_COMMAND}" != "" ]; then
  # Run the client's command.  Unquoted on purpose: HTCondor word-splits it.
  eval ${SSH_ORIGINAL_COMMAND}
else
  if [ "${_CONDOR_SLOT_NAME}" != "" ]; then
    echo "Welcome to ${_CONDOR_SLOT_NAME}"'!'
  fi
  if [ "${_CONDOR_JOB_PIDS}" != "" ]; then
    echo "Your condor job is running with pid(s) ${_CONDOR_JOB_PIDS}."
  fi
  if [ "${TMOUT}" != "" ]; then
    echo "You will be logged out after ${TMOUT} seconds of inactivity."
  fi
  if [ "${_CONDOR_SHELL}" != "" ]; then
    exec -l "${_CONDOR_SHELL}"
  fi
  exec -l "${SHELL}"
fi
