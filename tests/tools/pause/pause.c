/*
 * The test node's pause image: the first process of every pod sandbox. It holds the pod's namespaces open, reaps
 * the orphans the pod's PID namespace hands it, and exits when the runtime stops the sandbox.
 * Built by airq-testenv with `gcc -static -O2` and packed into an image of its own (no registry is reachable).
 */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal_number) {
    (void)signal_number;
    _exit(0);
}

static void reap(int signal_number) {
    (void)signal_number;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = stop;
    if (sigaction(SIGINT, &action, NULL) != 0 || sigaction(SIGTERM, &action, NULL) != 0) {
        return 1;
    }
    action.sa_handler = reap;
    action.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &action, NULL) != 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
