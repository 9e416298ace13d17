/* The one-second timing wheel: slots of doubly linked intrusive nodes indexed by tick. */
#include "wheel.h"

#include <string.h>

void wheel_init(struct wheel *w, uint32_t now)
{
	memset(w, 0, sizeof(*w));
	w->now = now;
}

void wheel_del(struct wheel *w, struct wheel_node *n)
{
	if (!n->pprev)
		return;
	*n->pprev = n->next;
	if (n->next)
		n->next->pprev = n->pprev;
	n->next = NULL;
	n->pprev = NULL;
	w->count--;
}

void wheel_put(struct wheel *w, struct wheel_node *n, uint32_t at)
{
	struct wheel_node **head;

	/* Never the tick being visited (its slot is being emptied) and never a full turn ahead,
	 * so every node in a slot is due at the same tick. */
	if (at <= w->now)
		at = w->now + 1;
	else if (at - w->now >= WHEEL_SLOTS)
		at = w->now + WHEEL_SLOTS - 1;
	wheel_del(w, n);
	head = &w->slot[at % WHEEL_SLOTS];
	n->next = *head;
	if (n->next)
		n->next->pprev = &n->next;
	n->pprev = head;
	*head = n;
	w->count++;
}

void wheel_advance(struct wheel *w, uint32_t to, void (*due)(struct wheel_node *n, void *arg),
                   void *arg)
{
	while ((int32_t)(to - w->now) > 0) {
		struct wheel_node **head = &w->slot[(w->now + 1) % WHEEL_SLOTS];
		struct wheel_node *n;

		w->now++;
		/* Taken one at a time from the head: due() may unfile other nodes of this slot, and
		 * what it files again goes to later slots. */
		while ((n = *head)) {
			wheel_del(w, n);
			due(n, arg);
		}
	}
}
