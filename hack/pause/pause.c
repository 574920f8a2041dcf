/*
 * pause: the do-nothing process that holds a pod's namespaces open.
 *
 * It sleeps until it receives SIGINT or SIGTERM and then exits with status 0. When the pod
 * shares one PID namespace this process is PID 1 of it, so orphaned processes get re-parented
 * to it: every SIGCHLD is answered by collecting all exited children, so none stay zombies.
 *
 * Built by hack/image.sh as a static binary (gcc -static -Os) and shipped alone in a FROM scratch
 * image tagged registry.k8s.io/pause:3.10, so a cluster without any registry can start pods.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PAUSE_VERSION
#define PAUSE_VERSION "3.10"
#endif

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void reap_children(void)
{
	int saved = errno; /* only async-signal-safe calls, errno left untouched for main() */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static void on_child(int sig)
{
	(void)sig;
	reap_children();
}

static int install(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigfillset(&sa.sa_mask); /* handlers never interrupt each other */
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	sigset_t blocked, waiting;

	if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
		printf("pause %s (device-localpv)\n", PAUSE_VERSION);
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not running as PID 1\n");

	/*
	 * Block the three signals while checking the stop flag, and only let them in inside
	 * sigsuspend(): a signal arriving between the check and the wait can then not be lost.
	 */
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGINT);
	sigaddset(&blocked, SIGTERM);
	sigaddset(&blocked, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &blocked, &waiting) != 0) {
		perror("pause: sigprocmask");
		return 1;
	}
	sigdelset(&waiting, SIGINT);
	sigdelset(&waiting, SIGTERM);
	sigdelset(&waiting, SIGCHLD);

	if (install(SIGINT, on_stop, 0) != 0 || install(SIGTERM, on_stop, 0) != 0 ||
	    install(SIGCHLD, on_child, SA_NOCLDSTOP) != 0) {
		perror("pause: sigaction");
		return 1;
	}

	reap_children(); /* children that exited before the handler was in place */
	while (!stop_requested)
		sigsuspend(&waiting);
	return 0;
}
